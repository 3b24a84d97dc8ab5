//! JSON pointer (RFC 6901) lookup over a response body's bytes that walks only the containers
//! on the pointer's path: everything else is skipped while checked for syntax, so no tree of
//! the whole body is built.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// The reference tokens of a pointer that is empty or starts with `/` (checked at load),
/// decoded once: RFC 6901 §4, `~1` is `/` and `~0` is `~`, in that order.
pub fn tokens(pointer: &str) -> Vec<String> {
    match pointer.strip_prefix('/') {
        Some(rest) => rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
        None => Vec::new(),
    }
}

/// The value at the pointer made of `tokens` in `document`; `None` when the body is not one
/// JSON text or holds nothing there (the same answers as a parse into a `Value` and its
/// `pointer`).
pub fn lookup(document: &[u8], tokens: &[String]) -> Option<Value> {
    // Checked once up front: skipped strings are not all checked for UTF-8 on the way.
    let document = std::str::from_utf8(without_bom(document)).ok()?;
    let Some((first, rest)) = tokens.split_first() else {
        return serde_json::from_str(document).ok();
    };
    let mut de = serde_json::Deserializer::from_str(document);
    let mut found = Child(first).deserialize(&mut de).ok()?;
    // The whole body must be one JSON text, as for a parse into a `Value`.
    de.end().ok()?;
    for token in rest {
        let raw = found?;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        found = Child(token).deserialize(&mut de).ok()?;
    }
    serde_json::from_str(found?.get()).ok()
}

/// `document` without a leading UTF-8 byte-order mark, which .NET and IIS services often send:
/// RFC 8259 §8.1 lets a parser ignore it.
pub fn without_bom(document: &[u8]) -> &[u8] {
    document.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(document)
}

/// Finds member or element `token` of the container being read; the container is read to its
/// end so that its syntax is checked. For an object with the name twice, the last one wins,
/// as in a `Value`.
struct Child<'t>(&'t str);

impl<'de> DeserializeSeed<'de> for Child<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Child<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                found = Some(map.next_value::<&RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let index = array_index(self.0);
        let mut found = None;
        let mut at = 0;
        loop {
            if Some(at) == index {
                match seq.next_element::<&RawValue>()? {
                    Some(raw) => found = Some(raw),
                    None => return Ok(found),
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(found);
            }
            at += 1;
        }
    }

    // Scalars have no children.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// RFC 6901 §4: an array index is `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// Reads an object member's name and says whether it is the wanted one, without keeping it.
struct KeyIs<'t>(&'t str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<bool, E> {
        Ok(name == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer is the one a parse into a `Value` gives.
    #[test]
    fn agrees_with_value_pointer() {
        let documents = [
            r#"{"error":{"code":"NOT_FOUND","n":1},"list":[10,{"a/b":true,"m~n":null}],"e":{}}"#,
            r#"{"a":1,"a":2}"#,
            r#"[1,[2,3],{"x":"y"}]"#,
            r#"{"k\u0065y":"escaped name","s":"caf\u00e9"}"#,
            r#""just a string""#,
            r#"{"a":1} trailing"#,
            r#"{"a":1,}"#,
            r#"{"a":[1,2,}"#,
            "not json",
            "",
            "  {\"a\" : { \"b\" : [ 0 , 1 ] } }  ",
        ];
        for pointer in ["/a", "/b"] {
            assert_eq!(
                lookup(b"{\"a\":1,\"b\":\"\xff\"}", &tokens(pointer)),
                None,
                "{pointer}"
            );
        }
        let pointers = [
            "",
            "/",
            "/error",
            "/error/code",
            "/error/n",
            "/error/missing",
            "/list/0",
            "/list/1",
            "/list/01",
            "/list/2",
            "/list/-",
            "/list/1/a~1b",
            "/list/1/m~0n",
            "/e",
            "/e/x",
            "/a",
            "/a/b",
            "/a/b/1",
            "/0",
            "/1/1",
            "/2/x",
            "/key",
            "/s",
            "/error/code/x",
        ];
        for document in documents {
            let value: Option<Value> = serde_json::from_str(document).ok();
            for pointer in pointers {
                let want = value.as_ref().and_then(|v| v.pointer(pointer)).cloned();
                assert_eq!(
                    lookup(document.as_bytes(), &tokens(pointer)),
                    want,
                    "{pointer} in {document}"
                );
            }
        }
    }
}
