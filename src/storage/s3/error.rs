//! Turns HTTP statuses, S3 error codes and transport failures into
//! [`StorageError`]s whose kind tells the retry layer whether another try
//! can help, and whose detail tells the user what to fix.

use crate::storage::{ErrorKind, StorageError};

use super::xml;

/// S3 codes whose kind differs from what their HTTP status suggests.
pub fn kind_of_code(code: &str) -> Option<ErrorKind> {
    match code {
        // A 404, but retrying or treating it as "no such object" would
        // only hide a misconfigured bucket.
        "NoSuchBucket" => Some(ErrorKind::Permanent),
        "NoSuchKey" | "NoSuchUpload" => Some(ErrorKind::NotFound),
        // Sent as 400/409, yet the AWS SDKs retry them and so do we.
        "RequestTimeout" | "OperationAborted" | "InternalError" | "SlowDown"
        | "ServiceUnavailable" => Some(ErrorKind::Transient),
        _ => None,
    }
}

fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        404 => ErrorKind::NotFound,
        408 | 429 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

pub fn kind(status: u16, code: &str) -> ErrorKind {
    kind_of_code(code).unwrap_or_else(|| kind_of_status(status))
}

fn hint(status: u16, code: &str, bucket_region: Option<&str>) -> Option<String> {
    let region_hint = || {
        match bucket_region {
        Some(r) => format!("the bucket is in region {r:?}: set AWS_REGION={r} (or check AWS_ENDPOINT)"),
        None => "the bucket is in another region or behind another endpoint: check AWS_REGION and AWS_ENDPOINT"
            .to_string(),
    }
    };
    let h = match code {
        "RequestTimeTooSkewed" => "the system clock is off: sync it (NTP)".to_string(),
        "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => {
            "the session token is expired or invalid: check AWS_SESSION_TOKEN".to_string()
        }
        "NoSuchBucket" => {
            "the bucket does not exist: check the bucket in WALG_S3_PREFIX".to_string()
        }
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => region_hint(),
        "AccessDenied" | "AllAccessDisabled" => {
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
                .to_string()
        }
        _ if status == 403 => {
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and AWS_REGION".to_string()
        }
        _ if (300..400).contains(&status) => region_hint(),
        _ => return None,
    };
    Some(h)
}

/// A short, single-line excerpt of a body that is not an S3 error
/// document (e.g. an HTML page from a proxy).
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The error for a response with a failure status, or a success status
/// whose body is an `<Error>` document.
pub fn from_response(
    op: &'static str,
    key: &str,
    status: u16,
    body: &[u8],
    bucket_region: Option<&str>,
) -> StorageError {
    let parsed = xml::parse_error(body);
    let code = parsed.as_ref().map_or("", |e| e.code.as_str());
    let mut detail = format!("HTTP {status}");
    match &parsed {
        Some(e) => {
            if !e.code.is_empty() {
                detail.push_str(&format!(" {}", e.code));
            }
            if !e.message.is_empty() {
                detail.push_str(&format!(": {}", e.message));
            }
        }
        None if body.is_empty() => {}
        None => detail.push_str(&format!(": {}", excerpt(body))),
    }
    if let Some(h) = hint(status, code, bucket_region) {
        detail.push_str(&format!(" ({h})"));
    }
    // A 200 carrying <Error> (CompleteMultipartUpload does this) is judged
    // by its code alone.
    let kind = if status < 300 {
        kind_of_code(code).unwrap_or(ErrorKind::Permanent)
    } else {
        kind(status, code)
    };
    StorageError::new(kind, op, key, detail)
}

pub fn from_transport(op: &'static str, key: &str, err: ureq::Error) -> StorageError {
    use ureq::Error as E;
    let (kind, hint) = match &err {
        // Certificate and handshake failures surface as InvalidData.
        E::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            (ErrorKind::Permanent, Some(TLS_HINT))
        }
        E::Io(_) | E::Timeout(_) | E::ConnectionFailed | E::Protocol(_) | E::BodyStalled => {
            (ErrorKind::Transient, None)
        }
        E::HostNotFound => (ErrorKind::Transient, Some("check AWS_ENDPOINT and DNS")),
        E::Tls(_) | E::Pem(_) | E::Rustls(_) => (ErrorKind::Permanent, Some(TLS_HINT)),
        _ => (ErrorKind::Permanent, None),
    };
    let detail = match hint {
        Some(h) => format!("{err} ({h})"),
        None => err.to_string(),
    };
    StorageError::new(kind, op, key, detail)
}

const TLS_HINT: &str = "TLS failure: for a private CA set WALG_S3_CA_CERT_FILE";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_map_to_kinds() {
        assert_eq!(kind(404, ""), ErrorKind::NotFound);
        assert_eq!(kind(404, "NoSuchKey"), ErrorKind::NotFound);
        assert_eq!(kind(404, "NoSuchBucket"), ErrorKind::Permanent);
        assert_eq!(kind(500, "InternalError"), ErrorKind::Transient);
        assert_eq!(kind(503, "SlowDown"), ErrorKind::Transient);
        assert_eq!(kind(502, ""), ErrorKind::Transient);
        assert_eq!(kind(429, ""), ErrorKind::Transient);
        assert_eq!(kind(400, "RequestTimeout"), ErrorKind::Transient);
        assert_eq!(kind(403, "SignatureDoesNotMatch"), ErrorKind::Permanent);
        assert_eq!(kind(403, "InvalidAccessKeyId"), ErrorKind::Permanent);
        assert_eq!(kind(400, "InvalidArgument"), ErrorKind::Permanent);
        assert_eq!(kind(301, ""), ErrorKind::Permanent);
    }

    #[test]
    fn forbidden_names_code_message_and_credentials() {
        let body = b"<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match</Message>\
                     <StringToSign>secret-ish</StringToSign></Error>";
        let e = from_response("get", "wal_005/x", 403, body, None);
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(e.op, "get");
        assert_eq!(e.key, "wal_005/x");
        assert!(
            e.detail
                .contains("HTTP 403 SignatureDoesNotMatch: The signature does not match"),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("AWS_SECRET_ACCESS_KEY"), "{}", e.detail);
        assert!(!e.detail.contains("secret-ish"));
    }

    #[test]
    fn redirect_names_bucket_region() {
        let e = from_response("list", "", 301, b"", Some("eu-central-1"));
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.detail.contains("AWS_REGION=eu-central-1"), "{}", e.detail);
    }

    #[test]
    fn error_inside_success_is_judged_by_code() {
        let body = b"<Error><Code>InternalError</Code><Message>try again</Message></Error>";
        assert_eq!(
            from_response("complete_multipart", "k", 200, body, None).kind,
            ErrorKind::Transient
        );
        let body = b"<Error><Code>InvalidPart</Code><Message>bad etag</Message></Error>";
        assert_eq!(
            from_response("complete_multipart", "k", 200, body, None).kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn non_xml_body_is_quoted_briefly() {
        let body = format!(
            "<html>\n<body>Bad   Gateway</body></html>{}",
            "x".repeat(500)
        );
        let e = from_response("put", "k", 502, body.as_bytes(), None);
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(
            e.detail
                .starts_with("HTTP 502: <html> <body>Bad Gateway</body></html>x"),
            "{}",
            e.detail
        );
        assert!(e.detail.len() < 260);
    }

    #[test]
    fn transport_errors() {
        let refused = ureq::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            from_transport("put", "k", refused).kind,
            ErrorKind::Transient
        );
        assert_eq!(
            from_transport("put", "k", ureq::Error::HostNotFound).kind,
            ErrorKind::Transient
        );
        assert_eq!(
            from_transport("put", "k", ureq::Error::ConnectionFailed).kind,
            ErrorKind::Transient
        );
        assert_eq!(
            from_transport("put", "k", ureq::Error::BadUri("x".into())).kind,
            ErrorKind::Permanent
        );
    }
}
