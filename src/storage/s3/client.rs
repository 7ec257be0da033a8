//! One signed HTTP exchange with S3, over a pooled keep-alive agent. No
//! retries here: the storage retry layer decides that, from the error kind.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::{self, Response};
use ureq::tls::{PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body, SendBody};

use crate::storage::{ErrorKind, StorageError};

use super::endpoint::Endpoint;
use super::error;
use super::sigv4::{self, canonical_query, sha256_hex, Signer, EMPTY_SHA256};

/// Error documents are small; anything bigger is not one.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// A ListObjectsV2 page of 1000 keys of the maximum 1024 bytes, escaped,
/// stays well below this.
const BODY_LIMIT: u64 = 32 * 1024 * 1024;

pub struct Client {
    agent: Agent,
    signer: Signer,
    endpoint: Endpoint,
}

/// One request. `object` is the full key in the bucket (empty for the
/// bucket itself); `key` is what the caller asked about, for messages.
pub struct Call<'a> {
    pub op: &'static str,
    pub method: &'static str,
    pub object: &'a str,
    pub key: &'a str,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<&'a [u8]>,
}

fn load_ca(path: &Path) -> Result<RootCerts, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read CA certificate file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "CA certificate file {} is not valid PEM: {e}",
                    path.display()
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "CA certificate file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

impl Client {
    /// `connections` is how many idle keep-alive connections to keep.
    pub fn new(
        endpoint: Endpoint,
        signer: Signer,
        ca_cert_file: Option<&Path>,
        connections: usize,
    ) -> Result<Self, String> {
        let mut tls = TlsConfig::builder();
        if let Some(path) = ca_cert_file {
            tls = tls.root_certs(load_ca(path)?);
        }
        let config = Agent::config_builder()
            // Error bodies carry the S3 code and message we report.
            .http_status_as_error(false)
            // A redirect means a wrong region or endpoint; following it
            // would need re-signing, and reporting it is more useful.
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .user_agent(concat!("walden/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(connections)
            .max_idle_connections(connections.saturating_mul(2))
            .tls_config(tls.build())
            .build();
        Ok(Client {
            agent: Agent::new_with_config(config),
            signer,
            endpoint,
        })
    }

    /// Sends the request; any HTTP status is returned as a response, only
    /// transport failures are errors.
    pub fn send(&self, call: &Call) -> Result<Response<Body>, StorageError> {
        let path = self.endpoint.path(call.object);
        let url = self.endpoint.url(&path, &canonical_query(&call.query));
        let payload_sha256 = match call.body {
            Some(data) => sha256_hex(data),
            None => EMPTY_SHA256.to_string(),
        };
        let to_sign = sigv4::Request {
            method: call.method,
            host: self.endpoint.host(),
            path: &path,
            query: &call.query,
            headers: &call.headers,
            payload_sha256: &payload_sha256,
        };
        let mut builder = http::Request::builder()
            .method(call.method)
            .uri(url.as_str());
        for (name, value) in self.signer.sign(&to_sign, SystemTime::now()) {
            builder = builder.header(name, value);
        }
        // The http crate's message names the bad part, never the value.
        let invalid = |e: http::Error| {
            StorageError::new(
                ErrorKind::Permanent,
                call.op,
                call.key,
                format!("invalid request: {e}"),
            )
        };
        let start = Instant::now();
        let result = match call.body {
            Some(data) => self.agent.run(builder.body(data).map_err(invalid)?),
            None => self
                .agent
                .run(builder.body(SendBody::none()).map_err(invalid)?),
        };
        let ms = start.elapsed().as_millis();
        match result {
            Ok(resp) => {
                log::debug!(
                    "s3 {} {} '{}': HTTP {} in {ms} ms",
                    call.op,
                    call.method,
                    call.key,
                    resp.status().as_u16()
                );
                Ok(resp)
            }
            Err(e) => {
                log::debug!(
                    "s3 {} {} '{}': failed in {ms} ms: {e}",
                    call.op,
                    call.method,
                    call.key
                );
                Err(error::from_transport(call.op, call.key, e))
            }
        }
    }

    /// Like [`Client::send`], with every non-2xx status turned into an
    /// error.
    pub fn send_ok(&self, call: &Call) -> Result<Response<Body>, StorageError> {
        let resp = self.send(call)?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(error_from(call.op, call.key, resp))
        }
    }
}

pub fn header<'a>(resp: &'a Response<Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The error for a failed response, with the S3 code and message from its
/// body when it has one.
pub fn error_from(op: &'static str, key: &str, resp: Response<Body>) -> StorageError {
    let status = resp.status().as_u16();
    let region = header(&resp, "x-amz-bucket-region").map(str::to_string);
    let mut body = Vec::new();
    // A body that cannot be read still leaves the status to report.
    let _ = resp
        .into_body()
        .into_reader()
        .take(ERROR_BODY_LIMIT)
        .read_to_end(&mut body);
    error::from_response(op, key, status, &body, region.as_deref())
}

/// Reads a whole (small, XML) response body.
pub fn read_body(
    op: &'static str,
    key: &str,
    resp: Response<Body>,
) -> Result<Vec<u8>, StorageError> {
    resp.into_body()
        .into_with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(|e| error::from_transport(op, key, e))
}
