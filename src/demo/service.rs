//! The sample legacy service behind `restatus demo`: a small inventory API that commits the
//! classic status-code mistakes on purpose.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Items by id, plus ids that were deleted (the service answers 410 for those).
#[derive(Default)]
struct Store {
    next_id: u64,
    items: BTreeMap<u64, String>,
    deleted: Vec<u64>,
}

/// Binds the sample service on an ephemeral loopback port and serves it in the background.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store = Arc::new(Mutex::new(Store {
        next_id: 1,
        ..Store::default()
    }));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(store.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn handle(
    store: Arc<Mutex<Store>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let token = request.headers().contains_key("x-auth-token");
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(json(400, r#"{"error":"unreadable body"}"#)),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Ok(mut store) = store.lock() else {
        return Ok(json(500, r#"{"error":"store unavailable"}"#));
    };
    Ok(match (&method, segments.as_slice()) {
        (&Method::GET, ["items"]) => list(&store),
        (&Method::POST, ["items"]) => create(&mut store, &body),
        (&Method::GET, ["items", id]) => fetch(&store, id),
        (&Method::PUT, ["items", id]) => update(&mut store, id, &body),
        (&Method::DELETE, ["items", id]) => delete(&mut store, id),
        // Accepted for later processing: the one thing this service gets right.
        (&Method::POST, ["orders"]) => json(202, r#"{"status":"queued"}"#),
        // A bad token is 401 here; the contract says 403.
        (_, ["admin", ..]) if !token => json(401, r#"{"error":"token required"}"#),
        (_, ["admin", ..]) => json(200, r#"{"items":"ok"}"#),
        // A dependency outage shows up as 503; the contract only knows 500.
        (_, ["reports", ..]) => json(503, r#"{"error":"report backend unavailable"}"#),
        // A redirect the contract does not document: left as is, and recorded.
        (&Method::GET, ["catalog"]) => redirect("/items"),
        _ => json(404, r#"{"error":"no such endpoint"}"#),
    })
}

fn list(store: &Store) -> Response<Full<Bytes>> {
    let items: Vec<serde_json::Value> = store
        .items
        .iter()
        .map(|(id, name)| serde_json::json!({ "id": id, "name": name }))
        .collect();
    json(200, &serde_json::json!({ "items": items }).to_string())
}

/// Answers 200 instead of 201, and 500 "duplicate key" instead of 409.
fn create(store: &mut Store, body: &[u8]) -> Response<Full<Bytes>> {
    let Some(name) = item_name(body) else {
        return json(422, r#"{"error":"body must be {\"name\": \"...\"}"}"#);
    };
    if store.items.values().any(|n| *n == name) {
        return json(
            500,
            r#"{"error":"ERROR: duplicate key value violates unique constraint \"items_name_key\""}"#,
        );
    }
    let id = store.next_id;
    store.next_id += 1;
    store.items.insert(id, name.clone());
    json(
        200,
        &serde_json::json!({ "id": id, "name": name }).to_string(),
    )
}

/// A missing item is 200 with an error body; a deleted one is 410.
fn fetch(store: &Store, id: &str) -> Response<Full<Bytes>> {
    let id = id.parse::<u64>().unwrap_or(0);
    match store.items.get(&id) {
        Some(name) => json(
            200,
            &serde_json::json!({ "id": id, "name": name }).to_string(),
        ),
        None if store.deleted.contains(&id) => json(410, r#"{"error":"item was deleted"}"#),
        None => json(
            200,
            r#"{"error":{"code":"NOT_FOUND","message":"no such item"}}"#,
        ),
    }
}

/// Invalid input is 422, which the contract folds into 400.
fn update(store: &mut Store, id: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let id = id.parse::<u64>().unwrap_or(0);
    let Some(name) = item_name(body) else {
        return json(422, r#"{"error":"body must be {\"name\": \"...\"}"}"#);
    };
    match store.items.get_mut(&id) {
        Some(slot) => {
            *slot = name.clone();
            json(
                200,
                &serde_json::json!({ "id": id, "name": name }).to_string(),
            )
        }
        None => json(
            200,
            r#"{"error":{"code":"NOT_FOUND","message":"no such item"}}"#,
        ),
    }
}

/// Answers 204; the contract says 200.
fn delete(store: &mut Store, id: &str) -> Response<Full<Bytes>> {
    let id = id.parse::<u64>().unwrap_or(0);
    if store.items.remove(&id).is_some() {
        store.deleted.push(id);
    }
    empty(204)
}

fn item_name(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("name")?.as_str().map(str::to_owned)
}

fn json(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn empty(status: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut response = empty(301);
    response
        .headers_mut()
        .insert(http::header::LOCATION, http::HeaderValue::from_static(to));
    response
}
