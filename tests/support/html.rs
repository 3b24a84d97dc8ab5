//! A well-formedness check for the HTML restatus writes, without an HTML parser.

/// Checks that every tag opened is closed in order (void elements aside) and that no
/// attribute quote is left open: enough to catch unescaped input breaking the page.
pub fn assert_well_formed(html: &str) {
    const VOID: [&str; 4] = ["meta", "br", "hr", "img"];
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        let end = rest.find('>').expect("every tag ends");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        assert_eq!(tag.matches('"').count() % 2, 0, "quotes balance in <{tag}>");
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "closing </{name}>");
            continue;
        }
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or_default();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "tag <{tag}>"
        );
        if VOID.contains(&name) || tag.ends_with('/') {
            continue;
        }
        if name == "style" {
            let end = rest.find("</style>").expect("style ends");
            rest = &rest[end + "</style>".len()..];
            continue;
        }
        open.push(name.to_string());
    }
    assert!(open.is_empty(), "left open: {open:?}");
    assert!(!rest.contains('>'), "text after the last tag");
}
