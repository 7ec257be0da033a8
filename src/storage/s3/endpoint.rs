//! Where requests go: scheme, `Host` header and URL path for a bucket and
//! key, in virtual-host style (`bucket.host/key`) or path style
//! (`host/bucket/key`).

use std::net::Ipv4Addr;

use crate::config::redact;
use crate::encoding::uri_encode;

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    scheme: &'static str,
    /// `Host` header value, port included when given.
    host: String,
    /// Already-encoded path prefix of the endpoint (no trailing `/`), for
    /// S3 services mounted below a path.
    base_path: String,
    bucket: String,
    path_style: bool,
}

/// Virtual-host addressing needs a bucket that is a single DNS label under
/// the endpoint; with TLS a dot would also break the wildcard certificate.
fn dns_compatible(bucket: &str, https: bool) -> bool {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    (3..=63).contains(&bucket.len())
        && ok_chars
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.'])
        && !(https && bucket.contains('.'))
}

/// IP addresses (and localhost) cannot carry a bucket sub-domain, so local
/// S3-compatible servers are always addressed path style.
fn is_ip_or_localhost(host_port: &str) -> bool {
    if host_port.starts_with('[') {
        return true;
    }
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.parse::<Ipv4Addr>().is_ok() || host.eq_ignore_ascii_case("localhost")
}

impl Endpoint {
    /// `endpoint` is a URL such as `http://127.0.0.1:9000` (scheme
    /// defaults to https); `None` means AWS for `region`.
    pub fn new(
        endpoint: Option<&str>,
        region: &str,
        bucket: &str,
        force_path_style: bool,
    ) -> Result<Self, String> {
        if bucket.is_empty() {
            return Err("the S3 bucket name is empty".to_string());
        }
        if bucket.contains('/') {
            return Err(format!("invalid S3 bucket name {bucket:?}"));
        }
        let Some(url) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
            if region.is_empty() {
                return Err(
                    "no AWS region set (AWS_REGION) and no endpoint (AWS_ENDPOINT)".to_string(),
                );
            }
            let domain = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            let host = format!("s3.{region}.{domain}");
            return Ok(Endpoint::build(
                "https",
                host,
                String::new(),
                bucket,
                force_path_style,
                false,
            ));
        };
        // Every message below may be logged: never with credentials. A
        // password may hold '/' or even "://", so any '@' is refused first.
        let shown = redact::value(url);
        if url.contains('@') {
            return Err(format!(
                "S3 endpoint {shown:?} has a user name or password in it: S3 credentials \
                 go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) if s.eq_ignore_ascii_case("https") => ("https", r),
            Some((s, r)) if s.eq_ignore_ascii_case("http") => ("http", r),
            Some((s, _)) => {
                return Err(format!(
                    "S3 endpoint {shown:?}: unsupported scheme {s:?}, expected http or https"
                ))
            }
            None => ("https", url),
        };
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        if host.is_empty() || host.contains(['?', '#', ' ']) {
            return Err(format!("S3 endpoint {shown:?} has no usable host"));
        }
        if path.contains(['?', '#']) {
            return Err(format!(
                "S3 endpoint {shown:?} must not have a query or fragment"
            ));
        }
        let path = path.trim_matches('/');
        let base_path = if path.is_empty() {
            String::new()
        } else {
            format!("/{}", uri_encode(path, true))
        };
        let ip = is_ip_or_localhost(host);
        Ok(Endpoint::build(
            scheme,
            host.to_string(),
            base_path,
            bucket,
            force_path_style,
            ip,
        ))
    }

    fn build(
        scheme: &'static str,
        host: String,
        base_path: String,
        bucket: &str,
        force: bool,
        ip: bool,
    ) -> Self {
        let path_style = force || ip || !dns_compatible(bucket, scheme == "https");
        let host = if path_style {
            host
        } else {
            format!("{bucket}.{host}")
        };
        Endpoint {
            scheme,
            host,
            base_path,
            bucket: bucket.to_string(),
            path_style,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn path_style(&self) -> bool {
        self.path_style
    }

    /// Encoded path of an object key in the bucket; the empty key names
    /// the bucket itself.
    pub fn path(&self, key: &str) -> String {
        let mut path = self.base_path.clone();
        if self.path_style {
            path.push('/');
            path.push_str(&uri_encode(&self.bucket, false));
            if key.is_empty() {
                return path;
            }
        }
        path.push('/');
        path.push_str(&uri_encode(key, true));
        path
    }

    /// `path` from [`Endpoint::path`], `query` already canonical.
    pub fn url(&self, path: &str, query: &str) -> String {
        if query.is_empty() {
            format!("{}://{}{}", self.scheme, self.host, path)
        } else {
            format!("{}://{}{}?{}", self.scheme, self.host, path, query)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_default_is_virtual_host() {
        let e = Endpoint::new(None, "eu-west-1", "my-bucket", false).unwrap();
        assert_eq!(e.host(), "my-bucket.s3.eu-west-1.amazonaws.com");
        assert_eq!(e.path("wal_005/0001.lz4"), "/wal_005/0001.lz4");
        assert_eq!(e.path(""), "/");
        assert_eq!(
            e.url("/k", ""),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/k"
        );
        assert_eq!(
            e.url("/", "list-type=2"),
            "https://my-bucket.s3.eu-west-1.amazonaws.com/?list-type=2"
        );
        let cn = Endpoint::new(None, "cn-north-1", "b-b-b", false).unwrap();
        assert_eq!(cn.host(), "b-b-b.s3.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn forced_or_incompatible_buckets_use_path_style() {
        let e = Endpoint::new(None, "us-east-1", "my-bucket", true).unwrap();
        assert_eq!(e.host(), "s3.us-east-1.amazonaws.com");
        assert_eq!(e.path("a b/c"), "/my-bucket/a%20b/c");
        assert_eq!(e.path(""), "/my-bucket");
        // A dot would not match the *.s3 wildcard certificate.
        assert!(Endpoint::new(None, "us-east-1", "my.bucket", false)
            .unwrap()
            .path_style());
        assert!(Endpoint::new(None, "us-east-1", "My_Bucket", false)
            .unwrap()
            .path_style());
        // Over plain http a dotted bucket is fine as a sub-domain.
        assert!(
            !Endpoint::new(Some("http://s3.example.com"), "r", "my.bucket", false)
                .unwrap()
                .path_style()
        );
    }

    #[test]
    fn ip_endpoints_use_path_style() {
        let e = Endpoint::new(
            Some("http://127.0.0.1:9000"),
            "us-east-1",
            "walden-test",
            false,
        )
        .unwrap();
        assert!(e.path_style());
        assert_eq!(e.host(), "127.0.0.1:9000");
        assert_eq!(e.path("root/key+1"), "/walden-test/root/key%2B1");
        assert_eq!(
            e.url("/walden-test/k", ""),
            "http://127.0.0.1:9000/walden-test/k"
        );
        assert!(
            Endpoint::new(Some("http://[::1]:9000"), "r", "bucket", false)
                .unwrap()
                .path_style()
        );
        assert!(
            Endpoint::new(Some("http://localhost:9000/"), "r", "bucket", false)
                .unwrap()
                .path_style()
        );
    }

    #[test]
    fn custom_host_name_is_virtual_host() {
        let e = Endpoint::new(
            Some("https://storage.example.com:8443/"),
            "r",
            "bucket",
            false,
        )
        .unwrap();
        assert_eq!(e.host(), "bucket.storage.example.com:8443");
        assert_eq!(
            e.url(&e.path("k"), ""),
            "https://bucket.storage.example.com:8443/k"
        );
        let no_scheme = Endpoint::new(Some("minio.local:9000"), "r", "bucket", true).unwrap();
        assert_eq!(
            no_scheme.url(&no_scheme.path("k"), ""),
            "https://minio.local:9000/bucket/k"
        );
    }

    #[test]
    fn endpoint_with_base_path() {
        let e = Endpoint::new(Some("http://10.0.0.1/s3 api/"), "r", "bucket", false).unwrap();
        assert_eq!(e.path("k"), "/s3%20api/bucket/k");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Endpoint::new(None, "r", "", false).is_err());
        assert!(Endpoint::new(None, "", "bucket", false).is_err());
        assert!(Endpoint::new(Some("ftp://host"), "r", "bucket", false).is_err());
        assert!(Endpoint::new(Some("http://"), "r", "bucket", false).is_err());
        assert!(Endpoint::new(Some("http://user@host"), "r", "bucket", false).is_err());
    }

    #[test]
    fn credentials_in_the_url_are_refused_and_not_echoed() {
        for url in [
            "http://user:s3cret@127.0.0.1:1",
            "user:s3cret@minio:9000",
            "https://user:s3/cret@host/base",
            "ftp://user:s3cret@host",
            "user:s3://cret@host",
        ] {
            let e = Endpoint::new(Some(url), "r", "bucket", false).unwrap_err();
            assert!(!e.contains("s3cret") && !e.contains("user:"), "{e}");
        }
        let e = Endpoint::new(Some("http://u:p@h?x=1"), "r", "bucket", false).unwrap_err();
        assert!(e.contains("***@h"), "{e}");
    }

    #[test]
    fn keys_are_encoded_per_segment() {
        let e = Endpoint::new(Some("http://127.0.0.1:1"), "r", "b", false).unwrap();
        assert_eq!(
            e.path("dir/sub dir/ä?#&=%"),
            "/b/dir/sub%20dir/%C3%A4%3F%23%26%3D%25"
        );
        assert_eq!(e.path("a//b"), "/b/a//b");
    }
}
