//! AWS Signature Version 4 for S3 requests sent with an `Authorization`
//! header. The payload hash is always a real SHA-256 (never
//! `UNSIGNED-PAYLOAD`), so S3 also verifies the body arrived intact.

use std::time::SystemTime;

use ring::{digest, hmac};

use crate::encoding::{hex, uri_encode};
use crate::time::amz_date;

/// SHA-256 of the empty payload, for requests without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// The credentials and scope to sign with. Deliberately not `Debug`, so a
/// stray `{:?}` cannot print the secret.
pub struct Signer {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    region: String,
}

/// What gets signed.
pub struct Request<'a> {
    pub method: &'a str,
    /// Value of the `Host` header, with the port when it is not the
    /// scheme's default.
    pub host: &'a str,
    /// The path exactly as sent, already encoded with [`uri_encode`].
    pub path: &'a str,
    /// Query parameters, not encoded.
    pub query: &'a [(String, String)],
    /// Headers sent besides the ones the signer adds; all are signed.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

/// The query string for both the URL and the canonical request: encoded
/// keys and values, sorted, `key=` for parameters without a value.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    let parts: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join("&")
}

fn hmac_sha256(key: &[u8], data: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
}

/// Header values are trimmed and inner runs of spaces collapsed, as the
/// canonical form requires.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Signer {
    pub fn new(
        access_key: &str,
        secret_key: &str,
        session_token: Option<&str>,
        region: &str,
    ) -> Self {
        Signer {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            session_token: session_token.filter(|t| !t.is_empty()).map(str::to_string),
            region: region.to_string(),
        }
    }

    /// All headers to send: the request's own plus `host`, `x-amz-date`,
    /// `x-amz-content-sha256`, `x-amz-security-token` (with a session
    /// token) and `authorization`. Names are lower-case.
    pub fn sign(&self, req: &Request, now: SystemTime) -> Vec<(String, String)> {
        let date_time = amz_date(now);
        let date = &date_time[..8];

        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), canonical_value(v)))
            .collect();
        headers.push(("host".to_string(), req.host.to_string()));
        headers.push(("x-amz-date".to_string(), date_time.clone()));
        headers.push((
            "x-amz-content-sha256".to_string(),
            req.payload_sha256.to_string(),
        ));
        if let Some(token) = &self.session_token {
            headers.push(("x-amz-security-token".to_string(), token.clone()));
        }
        headers.sort();

        let mut canonical_headers = String::new();
        for (k, v) in &headers {
            canonical_headers.push_str(k);
            canonical_headers.push(':');
            canonical_headers.push_str(v);
            canonical_headers.push('\n');
        }
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");

        let canonical_request = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method,
            req.path,
            canonical_query(req.query),
            canonical_headers,
            signed_headers,
            req.payload_sha256
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );

        let k_date = hmac_sha256(format!("AWS4{}", self.secret_key).as_bytes(), date);
        let k_region = hmac_sha256(k_date.as_ref(), &self.region);
        let k_service = hmac_sha256(k_region.as_ref(), "s3");
        let k_signing = hmac_sha256(k_service.as_ref(), "aws4_request");
        let signature = hex(hmac_sha256(k_signing.as_ref(), &string_to_sign).as_ref());

        headers.push((
            "authorization".to_string(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
                self.access_key
            ),
        ));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const ACCESS: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    fn may_24_2013() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sign(
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        hash: &str,
    ) -> Vec<(String, String)> {
        let signer = Signer::new(ACCESS, SECRET, None, "us-east-1");
        let query = pairs(query);
        let extra = pairs(extra);
        let req = Request {
            method,
            host: HOST,
            path,
            query: &query,
            headers: &extra,
            payload_sha256: hash,
        };
        signer.sign(&req, may_24_2013())
    }

    // The examples of the S3 "Signature Calculations for the Authorization
    // Header" documentation.
    #[test]
    fn aws_get_object_example() {
        let headers = sign(
            "GET",
            "/test.txt",
            &[],
            &[("Range", "bytes=0-9")],
            EMPTY_SHA256,
        );
        assert_eq!(
            header(&headers, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
                 Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
        assert_eq!(header(&headers, "x-amz-date"), Some("20130524T000000Z"));
        assert_eq!(header(&headers, "host"), Some(HOST));
        assert_eq!(header(&headers, "range"), Some("bytes=0-9"));
        assert_eq!(header(&headers, "x-amz-security-token"), None);
    }

    #[test]
    fn aws_put_object_example() {
        let body = b"Welcome to Amazon S3.";
        let hash = sha256_hex(body);
        assert_eq!(
            hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let path = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(path, "/test%24file.text");
        let extra = [
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ];
        let headers = sign("PUT", &path, &[], &extra, &hash);
        let auth = header(&headers, "authorization").unwrap_or_default();
        assert!(
            auth.contains(
                "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
            ),
            "{auth}"
        );
        assert!(
            auth.ends_with(
                "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
            ),
            "{auth}"
        );
    }

    #[test]
    fn aws_get_bucket_lifecycle_example() {
        let headers = sign("GET", "/", &[("lifecycle", "")], &[], EMPTY_SHA256);
        let auth = header(&headers, "authorization").unwrap_or_default();
        assert!(
            auth.ends_with(
                "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            ),
            "{auth}"
        );
    }

    #[test]
    fn aws_list_objects_example() {
        let headers = sign(
            "GET",
            "/",
            &[("prefix", "J"), ("max-keys", "2")],
            &[],
            EMPTY_SHA256,
        );
        let auth = header(&headers, "authorization").unwrap_or_default();
        assert!(
            auth.ends_with(
                "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{auth}"
        );
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let signer = Signer::new(ACCESS, SECRET, Some("TOKEN/with+chars"), "eu-west-1");
        let req = Request {
            method: "HEAD",
            host: HOST,
            path: "/a",
            query: &[],
            headers: &[],
            payload_sha256: EMPTY_SHA256,
        };
        let headers = signer.sign(&req, may_24_2013());
        assert_eq!(
            header(&headers, "x-amz-security-token"),
            Some("TOKEN/with+chars")
        );
        let auth = header(&headers, "authorization").unwrap_or_default();
        assert!(
            auth.contains("/20130524/eu-west-1/s3/aws4_request,"),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            ),
            "{auth}"
        );
        assert!(!auth.contains(SECRET));
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        let q = pairs(&[("uploadId", "a/b+c"), ("partNumber", "3"), ("delete", "")]);
        assert_eq!(
            canonical_query(&q),
            "delete=&partNumber=3&uploadId=a%2Fb%2Bc"
        );
        let q = pairs(&[
            ("prefix", "wal 005/"),
            ("list-type", "2"),
            ("delimiter", "/"),
        ]);
        assert_eq!(
            canonical_query(&q),
            "delimiter=%2F&list-type=2&prefix=wal%20005%2F"
        );
        assert_eq!(canonical_query(&[]), "");
    }
}
