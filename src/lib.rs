//! restatus: a reverse proxy that puts legacy REST services' status codes right and records
//! every deviation from the documented contract.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod access;
pub mod admin;
pub mod admit;
pub mod body;
pub mod check;
pub mod client;
pub mod config;
pub mod cors;
pub mod cut;
pub mod demo;
pub mod deviation;
pub mod expect;
pub mod explain;
pub mod headers;
pub mod http1;
pub mod idle;
pub mod live;
pub mod logging;
pub mod max_forwards;
pub mod metrics;
pub mod normalize;
pub mod proxy;
pub mod redirect;
pub mod report;
pub mod respond;
pub mod route;
pub mod rules;
pub mod say;
pub mod server;
pub mod signals;
pub mod tls;
pub mod upstream;
pub mod wire;
