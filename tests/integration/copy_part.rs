//! `walden copy` between two prefixes of one S3 service copies large
//! objects server-side in parts (CreateMultipartUpload, UploadPartCopy
//! with `x-amz-copy-source-range`, CompleteMultipartUpload), as it must
//! above S3's 5 GiB CopyObject limit. nanio ignores the copy source of an
//! UploadPartCopy, so the scripted server plays a small S3 here: objects in
//! memory, parts cut from the source's bytes by the range asked for, the
//! object assembled from the parts named at completion. The threshold is
//! lowered with `WALDEN_S3_COPY_PART_SIZE` (5 MiB, S3's smallest part) so
//! that a 12 MiB object takes three parts.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::fake_s3::BUCKET;
use crate::harness::{FakeRequest, FakeResponse, FakeS3, TempDir, Walden};
use crate::store::noise;

#[derive(Default)]
struct Bucket {
    objects: BTreeMap<String, Vec<u8>>,
    /// upload id → (key, part number → bytes).
    uploads: HashMap<String, (String, BTreeMap<u32, Vec<u8>>)>,
    next_upload: u32,
}

fn listing(b: &Bucket, prefix: &str, delimiter: Option<&str>) -> FakeResponse {
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>{BUCKET}</Name><Prefix>{prefix}</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
    );
    let mut dirs = Vec::new();
    for (k, v) in b.objects.range(prefix.to_string()..) {
        let Some(rest) = k.strip_prefix(prefix) else {
            break;
        };
        if let Some(d) = delimiter {
            if let Some(at) = rest.find(d) {
                let dir = format!("{prefix}{}", &rest[..at + d.len()]);
                if dirs.last() != Some(&dir) {
                    dirs.push(dir);
                }
                continue;
            }
        }
        body.push_str(&format!(
            "<Contents><Key>{k}</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified>\
             <ETag>\"e\"</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            v.len()
        ));
    }
    for d in dirs {
        body.push_str(&format!(
            "<CommonPrefixes><Prefix>{d}</Prefix></CommonPrefixes>"
        ));
    }
    body.push_str("</ListBucketResult>");
    FakeResponse::xml(200, body)
}

/// The source key of `x-amz-copy-source: /BUCKET/KEY`.
fn copy_source(req: &FakeRequest) -> Option<String> {
    let v = req.header("x-amz-copy-source")?;
    let rest = v.trim_start_matches('/').strip_prefix(BUCKET)?;
    Some(rest.trim_start_matches('/').to_string())
}

fn serve(bucket: &Mutex<Bucket>, req: &FakeRequest) -> FakeResponse {
    let mut b = bucket.lock().unwrap();
    if req.is_list() {
        return listing(
            &b,
            req.query_value("prefix").unwrap_or(""),
            req.query_value("delimiter"),
        );
    }
    let Some(key) = req.key().map(str::to_string) else {
        return FakeResponse::error(400, "InvalidRequest", "bucket-level request not scripted");
    };
    let upload = req.query_value("uploadId").map(str::to_string);
    match (req.method.as_str(), upload) {
        ("POST", None) if req.query.iter().any(|(k, _)| k == "uploads") => {
            b.next_upload += 1;
            let id = format!("upload-{}", b.next_upload);
            b.uploads.insert(id.clone(), (key, BTreeMap::new()));
            FakeResponse::xml(
                200,
                format!("<InitiateMultipartUploadResult><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"),
            )
        }
        ("PUT", Some(id)) => {
            let number: u32 = req.query_value("partNumber").unwrap().parse().unwrap();
            let data = match (copy_source(req), req.header("x-amz-copy-source-range")) {
                (Some(src), Some(range)) => {
                    let (first, last) = range
                        .strip_prefix("bytes=")
                        .and_then(|r| r.split_once('-'))
                        .map(|(a, z)| (a.parse::<usize>().unwrap(), z.parse::<usize>().unwrap()))
                        .unwrap();
                    let Some(obj) = b.objects.get(&src) else {
                        return FakeResponse::no_such_key();
                    };
                    if last >= obj.len() || first > last {
                        return FakeResponse::error(
                            416,
                            "InvalidRange",
                            "range outside the source",
                        );
                    }
                    obj[first..=last].to_vec()
                }
                _ => req.body.clone(),
            };
            let Some((_, parts)) = b.uploads.get_mut(&id) else {
                return FakeResponse::error(404, "NoSuchUpload", "no such upload");
            };
            parts.insert(number, data);
            FakeResponse::xml(
                200,
                format!("<CopyPartResult><ETag>\"part-{number}\"</ETag></CopyPartResult>"),
            )
            .header("ETag", &format!("\"part-{number}\""))
        }
        ("POST", Some(id)) => {
            let Some((dest, parts)) = b.uploads.remove(&id) else {
                return FakeResponse::error(404, "NoSuchUpload", "no such upload");
            };
            // The parts the completion names, in its order.
            let body = String::from_utf8_lossy(&req.body).into_owned();
            let mut object = Vec::new();
            for piece in body.split("<PartNumber>").skip(1) {
                let n: u32 = piece.split('<').next().unwrap().trim().parse().unwrap();
                match parts.get(&n) {
                    Some(p) => object.extend_from_slice(p),
                    None => return FakeResponse::error(400, "InvalidPart", "part not uploaded"),
                }
            }
            b.objects.insert(dest, object);
            FakeResponse::xml(
                200,
                "<CompleteMultipartUploadResult><ETag>\"done\"</ETag></CompleteMultipartUploadResult>",
            )
        }
        ("DELETE", Some(id)) => {
            b.uploads.remove(&id);
            FakeResponse::new(204, Vec::new())
        }
        ("PUT", None) => {
            let data = match copy_source(req) {
                Some(src) => match b.objects.get(&src) {
                    Some(o) => o.clone(),
                    None => return FakeResponse::no_such_key(),
                },
                None => req.body.clone(),
            };
            let copied = copy_source(req).is_some();
            b.objects.insert(key, data);
            if copied {
                FakeResponse::xml(
                    200,
                    "<CopyObjectResult><ETag>\"c\"</ETag></CopyObjectResult>",
                )
            } else {
                FakeResponse::ok("").header("ETag", "\"p\"")
            }
        }
        ("GET", None) => match b.objects.get(&key) {
            Some(o) => FakeResponse::ok(o.clone()),
            None => FakeResponse::no_such_key(),
        },
        ("HEAD", None) => match b.objects.get(&key) {
            Some(o) => FakeResponse::ok("").content_length(o.len() as u64),
            None => FakeResponse::new(404, Vec::new()),
        },
        ("DELETE", None) => {
            b.objects.remove(&key);
            FakeResponse::new(204, Vec::new())
        }
        _ => FakeResponse::error(400, "InvalidRequest", "not scripted"),
    }
}

fn config(dir: &TempDir, name: &str, s3: &FakeS3, prefix: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut pairs: Vec<String> = s3
        .env(prefix)
        .into_iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    pairs.push(format!(
        "{:?}: {:?}",
        "WALDEN_S3_COPY_PART_SIZE",
        (5u64 << 20).to_string()
    ));
    fs::write(&path, format!("{{{}}}", pairs.join(", "))).unwrap();
    path
}

#[test]
fn copy_of_a_large_object_on_one_service_goes_by_upload_part_copy() {
    let bucket = Arc::new(Mutex::new(Bucket::default()));
    let big_key = "src/wal_005/000000010000000000000001.lz4";
    let small_key = "src/wal_005/000000010000000000000002.lz4";
    let big = noise((12 << 20) + 5, 7);
    let small = noise(3000, 8);
    {
        let mut b = bucket.lock().unwrap();
        b.objects.insert(big_key.into(), big.clone());
        b.objects.insert(small_key.into(), small.clone());
    }
    let served = bucket.clone();
    let s3 = FakeS3::start(move |req| serve(&served, req));
    let dir = TempDir::new("copy-part");
    let from = config(&dir, "from.json", &s3, "src");
    let to = config(&dir, "to.json", &s3, "dst");
    let out = Walden::new()
        .arg("copy")
        .arg("--from")
        .arg(&from)
        .arg("--to")
        .arg(&to)
        .timeout(Duration::from_secs(120))
        .run();
    out.assert_ok();
    assert!(
        out.stderr.contains("2 of them server-side"),
        "{}",
        out.dump()
    );

    let b = bucket.lock().unwrap();
    assert_eq!(
        b.objects.get("dst/wal_005/000000010000000000000001.lz4"),
        Some(&big),
        "the object assembled from the copied parts differs"
    );
    assert_eq!(
        b.objects.get("dst/wal_005/000000010000000000000002.lz4"),
        Some(&small)
    );
    assert!(b.uploads.is_empty(), "an upload was left open");
    let reqs = s3.requests();
    let ranges: Vec<&str> = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.query_value("partNumber").is_some())
        .filter_map(|r| r.header("x-amz-copy-source-range"))
        .collect();
    assert_eq!(
        ranges,
        vec![
            "bytes=0-5242879",
            "bytes=5242880-10485759",
            "bytes=10485760-12582916"
        ],
        "one UploadPartCopy per 5 MiB range"
    );
    // The small object by one CopyObject; no byte through walden.
    let copies = reqs
        .iter()
        .filter(|r| {
            r.method == "PUT" && r.query.is_empty() && r.header("x-amz-copy-source").is_some()
        })
        .count();
    assert_eq!(copies, 1);
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "GET" && r.key().is_some_and(|k| k.starts_with("src/"))),
        "an object was downloaded"
    );
    assert!(
        !reqs.iter().any(|r| r.method == "PUT" && !r.body.is_empty()),
        "bytes were uploaded"
    );
}
