//! Just enough XML for S3: a small tree parser for the response bodies the
//! backend reads, the typed views of those bodies, and the two request
//! bodies it sends. S3 responses are small and shallow (a listing page is
//! at most 1000 keys, three levels deep), so a tree keeps the readers
//! simple; hard limits on depth and element count keep a hostile or broken
//! server from turning that tree into a stack overflow (dropping a deep
//! tree recurses) or into hundreds of megabytes of tiny elements.

use std::time::SystemTime;

use crate::time::parse_iso8601;

#[derive(Debug, Default, PartialEq)]
pub struct Element {
    /// Local name, namespace prefix dropped.
    pub name: String,
    /// All character data directly inside the element, entities resolved.
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Trimmed text of a child, for values where surrounding whitespace
    /// is formatting (not for keys).
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

fn local_name(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

/// Resolves the predefined entities and character references.
pub fn unescape(s: &str) -> Result<String, String> {
    if !s.contains('&') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after
            .find(';')
            .ok_or_else(|| format!("unterminated entity in {s:?}"))?;
        let entity = &after[..semi];
        let ch = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = entity.strip_prefix('#') {
                    d.parse::<u32>().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(ch);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Escapes text for element content. `\r` is written as a reference
/// because a parser would otherwise normalise it away; other control
/// characters cannot be represented in XML 1.0 at all, and S3 rejects them
/// either way.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 => out.push_str(&format!("&#x{:X};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn skip_past<'a>(s: &'a str, end: &str) -> Result<&'a str, String> {
    s.find(end)
        .map(|i| &s[i + end.len()..])
        .ok_or_else(|| format!("missing {end:?}"))
}

/// Deepest nesting accepted. S3's documents are at most four levels deep
/// (`ListBucketResult/Contents/Owner/ID`); the limit leaves room for
/// compatible servers' extensions while keeping recursion over the tree
/// (drop, `Debug`, `PartialEq`) shallow.
pub const MAX_DEPTH: usize = 32;

/// Most elements accepted in one document. A full listing page of 1000
/// keys has about 10,000 (with owner and checksum fields); each element
/// costs ~100 bytes, so the tree stays near 10 MB at worst.
pub const MAX_ELEMENTS: usize = 100_000;

/// Parses a document into its root element; documents deeper than
/// [`MAX_DEPTH`] or with more than [`MAX_ELEMENTS`] elements are errors.
pub fn parse(input: &[u8]) -> Result<Element, String> {
    let doc = std::str::from_utf8(input).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let mut rest = doc.strip_prefix('\u{feff}').unwrap_or(doc);
    let mut stack: Vec<Element> = Vec::new();
    let mut elements = 0usize;
    loop {
        let Some(lt) = rest.find('<') else {
            if !rest.trim().is_empty() {
                return Err("text after the document".to_string());
            }
            return Err(match stack.last() {
                Some(open) => format!("element <{}> is not closed", open.name),
                None => "no root element".to_string(),
            });
        };
        let text = &rest[..lt];
        match stack.last_mut() {
            Some(top) => top.text.push_str(&unescape(text)?),
            None if !text.trim().is_empty() => {
                return Err("text outside the root element".to_string())
            }
            None => {}
        }
        rest = &rest[lt..];

        if rest.starts_with("<?") {
            rest = skip_past(rest, "?>")?;
        } else if rest.starts_with("<!--") {
            rest = skip_past(rest, "-->")?;
        } else if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
            let end = cdata.find("]]>").ok_or("unterminated CDATA")?;
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&cdata[..end]);
            }
            rest = &cdata[end + 3..];
        } else if rest.starts_with("<!") {
            rest = skip_past(rest, ">")?;
        } else if let Some(close) = rest.strip_prefix("</") {
            let gt = close.find('>').ok_or("unterminated end tag")?;
            let name = local_name(close[..gt].trim());
            let done = stack.pop().ok_or_else(|| format!("unexpected </{name}>"))?;
            if done.name != name {
                return Err(format!("<{}> closed by </{name}>", done.name));
            }
            rest = &close[gt + 1..];
            match stack.last_mut() {
                Some(parent) => parent.children.push(done),
                None => return Ok(done),
            }
        } else {
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(format!(
                    "more than {MAX_ELEMENTS} elements, far more than any S3 answer holds"
                ));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(format!(
                    "elements nested deeper than {MAX_DEPTH}, which no S3 answer is"
                ));
            }
            let (element, self_closing, after) = parse_start_tag(&rest[1..])?;
            rest = after;
            if self_closing {
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            } else {
                stack.push(element);
            }
        }
    }
}

/// Reads a start tag after its `<`: the element, whether it is `<x/>`,
/// and the input after the `>`. Attributes are skipped; S3's responses
/// carry nothing in them that the backend needs.
fn parse_start_tag(s: &str) -> Result<(Element, bool, &str), String> {
    let name_end = s
        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .ok_or("unterminated start tag")?;
    let name = &s[..name_end];
    if name.is_empty() {
        return Err("empty element name".to_string());
    }
    let mut quote: Option<char> = None;
    for (i, c) in s[name_end..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => {
                let pos = name_end + i;
                let self_closing = s[..pos].ends_with('/');
                let element = Element {
                    name: local_name(name).to_string(),
                    ..Element::default()
                };
                return Ok((element, self_closing, &s[pos + 1..]));
            }
            (None, _) => {}
        }
    }
    Err(format!("unterminated start tag <{name}"))
}

/// The `<Error>` body S3 sends with failures (and sometimes with 200).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// `Some` when the body is an S3 `<Error>` document.
pub fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    let root = parse(body).ok()?;
    if root.name != "Error" {
        return None;
    }
    Some(ErrorBody {
        code: root.child_text("Code").unwrap_or_default().to_string(),
        message: root.child_text("Message").unwrap_or_default().to_string(),
    })
}

fn expect_root(body: &[u8], name: &str) -> Result<Element, String> {
    let root = parse(body)?;
    if root.name != name {
        return Err(format!("expected <{name}>, got <{}>", root.name));
    }
    Ok(root)
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Most entries (objects plus common prefixes) accepted in one listing
/// page. S3 sends at most 1000 (`max-keys` cannot raise it); compatible
/// servers that send more still fit ten times over, and the page held in
/// memory stays bounded.
pub const MAX_PAGE_ENTRIES: usize = 10_000;

/// One page of ListObjectsV2.
#[derive(Debug, Default, PartialEq)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_token: Option<String>,
}

pub fn parse_list(body: &[u8]) -> Result<ListPage, String> {
    let root = expect_root(body, "ListBucketResult")?;
    let entries =
        root.children_named("Contents").count() + root.children_named("CommonPrefixes").count();
    if entries > MAX_PAGE_ENTRIES {
        return Err(format!(
            "{entries} entries in one page, more than {MAX_PAGE_ENTRIES} (S3 sends at most 1000)"
        ));
    }
    // A flag that reads as neither could hide the rest of the listing.
    let is_truncated = match root.child_text("IsTruncated") {
        None => false,
        Some(t) if t.eq_ignore_ascii_case("false") => false,
        Some(t) if t.eq_ignore_ascii_case("true") => true,
        Some(t) => return Err(format!("<IsTruncated> is {t:?}, neither true nor false")),
    };
    let mut page = ListPage {
        is_truncated,
        next_token: root
            .child_text("NextContinuationToken")
            .filter(|t| !t.is_empty())
            .map(str::to_string),
        ..ListPage::default()
    };
    for c in root.children_named("Contents") {
        let key = c
            .child("Key")
            .ok_or("<Contents> without <Key>")?
            .text
            .clone();
        let size = match c.child_text("Size") {
            Some(s) => s
                .parse()
                .map_err(|_| format!("bad <Size> {s:?} for {key:?}"))?,
            None => 0,
        };
        let modified = c.child_text("LastModified").and_then(parse_iso8601);
        page.objects.push(ListedObject {
            key,
            size,
            modified,
        });
    }
    for p in root.children_named("CommonPrefixes") {
        let prefix = p
            .child("Prefix")
            .ok_or("<CommonPrefixes> without <Prefix>")?;
        page.prefixes.push(prefix.text.clone());
    }
    Ok(page)
}

/// One unfinished multipart upload of ListMultipartUploads.
#[derive(Debug, PartialEq)]
pub struct ListedUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Default, PartialEq)]
pub struct UploadsPage {
    pub uploads: Vec<ListedUpload>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

pub fn parse_uploads(body: &[u8]) -> Result<UploadsPage, String> {
    let root = expect_root(body, "ListMultipartUploadsResult")?;
    let count = root.children_named("Upload").count();
    if count > MAX_PAGE_ENTRIES {
        return Err(format!(
            "{count} uploads in one page, more than {MAX_PAGE_ENTRIES} (S3 sends at most 1000)"
        ));
    }
    let is_truncated = match root.child_text("IsTruncated") {
        None => false,
        Some(t) if t.eq_ignore_ascii_case("false") => false,
        Some(t) if t.eq_ignore_ascii_case("true") => true,
        Some(t) => return Err(format!("<IsTruncated> is {t:?}, neither true nor false")),
    };
    let marker = |name: &str| {
        root.child(name)
            .map(|e| e.text.clone())
            .filter(|t| !t.is_empty())
    };
    let mut page = UploadsPage {
        is_truncated,
        next_key_marker: marker("NextKeyMarker"),
        next_upload_id_marker: marker("NextUploadIdMarker"),
        ..UploadsPage::default()
    };
    for u in root.children_named("Upload") {
        let key = u.child("Key").ok_or("<Upload> without <Key>")?.text.clone();
        let upload_id = match u.child_text("UploadId") {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => return Err(format!("<Upload> of {key:?} without <UploadId>")),
        };
        let initiated = u.child_text("Initiated").and_then(parse_iso8601);
        page.uploads.push(ListedUpload {
            key,
            upload_id,
            initiated,
        });
    }
    Ok(page)
}

pub fn parse_upload_id(body: &[u8]) -> Result<String, String> {
    let root = expect_root(body, "InitiateMultipartUploadResult")?;
    match root.child_text("UploadId") {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err("no <UploadId> in the response".to_string()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteFailure {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// The per-key failures of a DeleteObjects call.
pub fn parse_delete_result(body: &[u8]) -> Result<Vec<DeleteFailure>, String> {
    let root = expect_root(body, "DeleteResult")?;
    Ok(root
        .children_named("Error")
        .map(|e| DeleteFailure {
            key: e.child("Key").map(|k| k.text.clone()).unwrap_or_default(),
            code: e.child_text("Code").unwrap_or_default().to_string(),
            message: e.child_text("Message").unwrap_or_default().to_string(),
        })
        .collect())
}

const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// DeleteObjects body; quiet mode so the answer lists only failures.
pub fn delete_body(keys: &[String]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\"{NS}\"><Quiet>true</Quiet>"
    );
    for key in keys {
        out.push_str("<Object><Key>");
        out.push_str(&escape(key));
        out.push_str("</Key></Object>");
    }
    out.push_str("</Delete>");
    out
}

pub fn complete_body(parts: &[(u32, String)]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CompleteMultipartUpload xmlns=\"{NS}\">"
    );
    for (number, etag) in parts {
        out.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
            escape(etag)
        ));
    }
    out.push_str("</CompleteMultipartUpload>");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn multipart_uploads_page() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><IsTruncated>true</IsTruncated>
  <NextKeyMarker>p/k&amp;2</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <Upload><Key>p/k1</Key><UploadId>id1</UploadId><Initiated>2026-12-05T10:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/k&amp;2</Key><UploadId>id2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_uploads(body).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_key_marker.as_deref(), Some("p/k&2"));
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id2"));
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[1].key, "p/k&2");
        assert!(page.uploads[0].initiated.is_some());
        let no_id = b"<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>";
        assert!(parse_uploads(no_id)
            .unwrap_err()
            .contains("without <UploadId>"));
    }

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_list_page_with_dirs_and_token() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>root/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>
  <Delimiter>/</Delimiter>
  <IsTruncated>true</IsTruncated>
  <Contents>
    <Key>root/a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos; &#65;&#x42;</Key>
    <LastModified>2026-11-24T06:07:54.000Z</LastModified>
    <ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag>
    <Size>12345678901</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents><Key> root/spaced </Key><Size>0</Size></Contents>
  <CommonPrefixes><Prefix>root/dir/</Prefix></CommonPrefixes>
  <CommonPrefixes><Prefix><![CDATA[root/<cdata>/]]></Prefix></CommonPrefixes>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>"#;
        let page = parse_list(body).unwrap();
        assert_eq!(page.objects.len(), 2);
        assert_eq!(page.objects[0].key, "root/a&b <c> \"d\" 'e' AB");
        assert_eq!(page.objects[0].size, 12_345_678_901);
        assert_eq!(
            page.objects[0].modified,
            Some(UNIX_EPOCH + Duration::from_secs(1_795_500_474))
        );
        assert_eq!(page.objects[1].key, " root/spaced ");
        assert_eq!(page.objects[1].modified, None);
        assert_eq!(
            page.prefixes,
            vec!["root/dir/".to_string(), "root/<cdata>/".to_string()]
        );
        assert!(page.is_truncated);
        assert_eq!(
            page.next_token.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
    }

    #[test]
    fn parses_last_list_page() {
        let body = b"<ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>";
        let page = parse_list(body).unwrap();
        assert_eq!(page, ListPage::default());
    }

    #[test]
    fn list_rejects_other_documents() {
        assert!(parse_list(b"<Error><Code>NoSuchBucket</Code></Error>").is_err());
        assert!(parse_list(
            b"<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>"
        )
        .is_err());
        assert!(parse_list(
            b"<ListBucketResult><Contents><Key>k</Key><Size>x</Size></Contents></ListBucketResult>"
        )
        .is_err());
        assert!(parse_list(b"not xml").is_err());
        assert!(parse_list(b"").is_err());
        assert!(parse_list(b"<ListBucketResult><IsTruncated>").is_err());
        assert!(parse_list(&[0xff, 0xfe, b'<']).is_err());
    }

    #[test]
    fn parses_upload_id() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>example-bucket</Bucket><Key>example-object</Key>
  <UploadId>VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
</InitiateMultipartUploadResult>"#;
        assert_eq!(
            parse_upload_id(body).unwrap(),
            "VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA"
        );
        assert!(parse_upload_id(
            b"<InitiateMultipartUploadResult><UploadId/></InitiateMultipartUploadResult>"
        )
        .is_err());
    }

    #[test]
    fn parses_error_body() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message><AWSAccessKeyId>AKIA</AWSAccessKeyId><RequestId>4442587FB7D0A2F9</RequestId></Error>"#;
        let err = parse_error(body).unwrap();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        assert!(err.message.starts_with("The request signature"));
        assert_eq!(parse_error(b"<CompleteMultipartUploadResult/>"), None);
        assert_eq!(parse_error(b""), None);
        assert_eq!(parse_error(b"<html>oops"), None);
    }

    #[test]
    fn parses_delete_result_failures() {
        let body = br#"<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Deleted><Key>ok</Key></Deleted>
  <Error><Key>a&amp;b</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>
</DeleteResult>"#;
        let failures = parse_delete_result(body).unwrap();
        assert_eq!(
            failures,
            vec![DeleteFailure {
                key: "a&b".into(),
                code: "AccessDenied".into(),
                message: "Access Denied".into()
            }]
        );
        assert_eq!(parse_delete_result(b"<DeleteResult/>").unwrap(), vec![]);
    }

    #[test]
    fn parser_handles_prefixes_comments_and_attributes() {
        let body = br#"<?xml version="1.0"?><!-- hi --><s3:Root a="x>y" b='1'><s3:Item k="v"/><Item>t</Item></s3:Root>"#;
        let root = parse(body).unwrap();
        assert_eq!(root.name, "Root");
        assert_eq!(root.children.len(), 2);
        assert_eq!(root.children[0].name, "Item");
        assert_eq!(root.children[1].text, "t");
        assert!(parse(b"<a><b></a></b>").is_err());
        assert!(parse(b"<a>&bogus;</a>").is_err());
        assert!(parse(b"<a>&amp</a>").is_err());
    }

    #[test]
    fn unescape_entities() {
        assert_eq!(
            unescape("a&lt;b&gt;c&amp;d&quot;e&apos;f&#48;&#x31;&#X32;").unwrap(),
            "a<b>c&d\"e'f012"
        );
        assert_eq!(unescape("plain").unwrap(), "plain");
        assert!(unescape("&#xD800;").is_err());
    }

    #[test]
    fn delete_body_escapes_keys() {
        let keys = vec![
            "root/a&b".to_string(),
            "root/<x>'\"".to_string(),
            "r\rn".to_string(),
        ];
        let body = delete_body(&keys);
        assert!(body.contains("<Quiet>true</Quiet>"));
        assert!(body.contains("<Object><Key>root/a&amp;b</Key></Object>"));
        assert!(body.contains("<Object><Key>root/&lt;x&gt;&apos;&quot;</Key></Object>"));
        assert!(body.contains("<Key>r&#xD;n</Key>"));
        // What we send must read back as the same keys.
        let root = parse(body.as_bytes()).unwrap();
        let back: Vec<String> = root
            .children_named("Object")
            .map(|o| o.child("Key").unwrap().text.clone())
            .collect();
        assert_eq!(back, keys);
    }

    #[test]
    fn complete_body_lists_parts_in_order() {
        let parts = vec![(1, "\"etag1\"".to_string()), (2, "\"etag2\"".to_string())];
        let body = complete_body(&parts);
        assert!(body.contains(
            "<Part><PartNumber>1</PartNumber><ETag>&quot;etag1&quot;</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>&quot;etag2&quot;</ETag></Part></CompleteMultipartUpload>"
        ));
    }

    /// Depth and element count of a tree, without recursion (a tree that
    /// broke the depth limit must fail the assertion, not the stack).
    fn shape(root: &Element) -> (usize, usize) {
        let mut stack = vec![(root, 1usize)];
        let (mut depth, mut count) = (0, 0);
        while let Some((e, d)) = stack.pop() {
            depth = depth.max(d);
            count += 1;
            stack.extend(e.children.iter().map(|c| (c, d + 1)));
        }
        (depth, count)
    }

    fn nested(depth: usize) -> Vec<u8> {
        format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth)).into_bytes()
    }

    #[test]
    fn depth_is_limited() {
        let root = parse(&nested(MAX_DEPTH)).unwrap();
        assert_eq!(shape(&root), (MAX_DEPTH, MAX_DEPTH));
        let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("nested deeper than 32"), "{err}");
        // Self-closing elements count too.
        let body = format!(
            "{}<b/>{}",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert!(parse(body.as_bytes()).is_err());
        // Deep enough to overflow the stack if it were ever built.
        assert!(parse(&nested(1_000_000)).is_err());
        assert!(parse_error(&nested(1_000_000)).is_none());
    }

    #[test]
    fn element_count_is_limited() {
        let doc = |n: usize| format!("<r>{}</r>", "<a/>".repeat(n - 1)).into_bytes();
        assert_eq!(shape(&parse(&doc(MAX_ELEMENTS)).unwrap()).1, MAX_ELEMENTS);
        let err = parse(&doc(MAX_ELEMENTS + 1)).unwrap_err();
        assert!(err.contains("more than 100000 elements"), "{err}");
        // 32 MB of tiny elements stops at the limit, not at the end.
        assert!(parse_list(&doc(8_000_000)).is_err());
        assert!(parse_delete_result(&doc(8_000_000)).is_err());
        assert!(parse_upload_id(&doc(8_000_000)).is_err());
    }

    fn page(keys: usize, prefixes: usize) -> Vec<u8> {
        let mut body = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><Prefix>p/</Prefix>\
             <KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>",
        );
        for i in 0..keys {
            body.push_str(&format!(
                "<Contents><Key>p/wal_005/{i:024X}.lz4</Key>\
                 <LastModified>2026-11-24T06:07:54.000Z</LastModified>\
                 <ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>{i}</Size>\
                 <Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner>\
                 <StorageClass>STANDARD</StorageClass></Contents>"
            ));
        }
        for i in 0..prefixes {
            body.push_str(&format!(
                "<CommonPrefixes><Prefix>p/d{i}/</Prefix></CommonPrefixes>"
            ));
        }
        body.push_str("<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>");
        body.into_bytes()
    }

    #[test]
    fn full_page_is_far_below_the_limits() {
        let body = page(1000, 1000);
        let (depth, count) = shape(&parse(&body).unwrap());
        assert!(depth <= 4 && count * 5 < MAX_ELEMENTS, "{depth} {count}");
        let p = parse_list(&body).unwrap();
        assert_eq!((p.objects.len(), p.prefixes.len()), (1000, 1000));
    }

    #[test]
    fn page_entries_are_limited() {
        let body = format!(
            "<ListBucketResult>{}</ListBucketResult>",
            "<Contents><Key>k</Key></Contents>".repeat(MAX_PAGE_ENTRIES + 1)
        );
        let err = parse_list(body.as_bytes()).unwrap_err();
        assert!(err.contains("more than 10000"), "{err}");
    }

    #[test]
    fn truncation_flag_must_be_a_boolean() {
        let flag = |v: &str| {
            parse_list(format!("<ListBucketResult><IsTruncated>{v}</IsTruncated><NextContinuationToken>t</NextContinuationToken></ListBucketResult>").as_bytes())
                .map(|p| p.is_truncated)
        };
        assert_eq!(flag("true"), Ok(true));
        assert_eq!(flag(" TRUE\n"), Ok(true));
        assert_eq!(flag("false"), Ok(false));
        assert!(flag("yes").unwrap_err().contains("neither true nor false"));
        assert!(flag("").is_err());
    }

    #[test]
    fn fuzz_list_xml() {
        let seeds: Vec<Vec<u8>> = vec![
            page(3, 2),
            page(1000, 0),
            b"<ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>".to_vec(),
            br#"<?xml version="1.0"?><!-- c --><ListBucketResult><Contents><Key><![CDATA[p/<x>]]></Key><Size>1</Size></Contents><CommonPrefixes><Prefix>p/a&amp;b/</Prefix></CommonPrefixes><IsTruncated>false</IsTruncated></ListBucketResult>"#.to_vec(),
            b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>".to_vec(),
            b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2Fk</UploadId></InitiateMultipartUploadResult>".to_vec(),
            b"<DeleteResult><Deleted><Key>ok</Key></Deleted><Error><Key>a&amp;b</Key><Code>AccessDenied</Code><Message>no</Message></Error></DeleteResult>".to_vec(),
            nested(MAX_DEPTH),
        ];
        crate::fuzz::run("list_xml", &seeds, |input| {
            if let Ok(root) = parse(input) {
                let (depth, count) = shape(&root);
                assert!(depth <= MAX_DEPTH, "depth {depth}");
                assert!(count <= MAX_ELEMENTS, "{count} elements");
            }
            if let Ok(page) = parse_list(input) {
                assert!(page.objects.len() + page.prefixes.len() <= MAX_PAGE_ENTRIES);
                assert!(page.next_token.as_ref().is_none_or(|t| !t.is_empty()));
                // Every key is text from the body: never longer than it.
                for o in &page.objects {
                    assert!(o.key.len() <= input.len());
                }
            }
            if let Some(e) = parse_error(input) {
                assert!(e.code.len() + e.message.len() <= input.len());
            }
            if let Ok(id) = parse_upload_id(input) {
                assert!(!id.is_empty());
            }
            if let Ok(failures) = parse_delete_result(input) {
                assert!(failures.len() <= MAX_ELEMENTS);
            }
        });
    }
}
