//! What walden reads itself from an X.509 certificate's DER, with a few
//! bounds-checked steps, where rustls's own checks differ from libpq's:
//! the validity dates (a self-signed server certificate listed in
//! `PGSSLROOTCERT` is trusted as is, as rustls refuses a CA certificate as
//! a server's own, and its dates must still be checked), and the subject's
//! Common Name (libpq matches the host against it when the certificate
//! has no DNS or IP subjectAltName; rustls reads only subjectAltName),
//! and the parts an X.509 v1 certificate's signature check needs (webpki
//! reads only v3, and OpenSSL 3.0's `openssl x509 -req`, PostgreSQL's
//! documented recipe, makes v1 certificates).

use std::time::SystemTime;

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` at the start of a v3 TBSCertificate.
const VERSION_TAG: u8 = 0xA0;
/// `[3] EXPLICIT Extensions` at the end of a v3 TBSCertificate.
const EXTENSIONS_TAG: u8 = 0xA3;
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0C;
const PRINTABLE_STRING: u8 = 0x13;
const T61_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
const BMP_STRING: u8 = 0x1E;
/// GeneralName `[2] dNSName` and `[7] iPAddress` (implicit, primitive).
const DNS_NAME: u8 = 0x82;
const IP_ADDRESS: u8 = 0x87;
/// 2.5.4.3 and 2.5.29.17.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];
/// 2.5.29.19 and 2.5.29.15.
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1D, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1D, 0x0F];

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = (rest.get(..count)?, rest.get(count..)?);
        let len = bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize);
        (len, rest)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// A DER element's tag, content, whole encoding (header included) and
/// what follows it.
type WholeElement<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// One DER element as [`element`] reads it, and its whole encoding.
fn element_whole(input: &[u8]) -> Option<WholeElement<'_>> {
    let (tag, content, rest) = element(input)?;
    let whole = input.get(..input.len() - rest.len())?;
    Some((tag, content, whole, rest))
}

/// A certificate's parts that a signature check and a path to a CA read.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// 0 for v1, 2 for v3.
    pub version: u64,
    /// The TBSCertificate element, header included: what the issuer signed.
    pub tbs: &'a [u8],
    /// The AlgorithmIdentifier's content (no SEQUENCE header), as
    /// rustls's algorithm ids hold it.
    pub signature_algorithm: &'a [u8],
    /// The signature's bytes.
    pub signature: &'a [u8],
    /// The issuer's and the subject's Name elements, compared byte for byte.
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
    /// The SubjectPublicKeyInfo element, and its AlgorithmIdentifier's
    /// content and key bytes.
    pub spki: &'a [u8],
    pub key_algorithm: &'a [u8],
    pub public_key: &'a [u8],
    /// The Extension elements one after another (empty when none).
    pub extensions: &'a [u8],
}

/// The parts of a DER certificate; `None` if it cannot be read or its
/// two signature algorithm fields differ.
pub fn parse(der: &[u8]) -> Option<Parsed<'_>> {
    let (tag, certificate, rest) = element(der)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return None;
    }
    let (tag, mut tbs_content, tbs, rest) = element_whole(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, signature_algorithm, rest) = element(rest)?;
    let (bits_tag, bits, rest) = element(rest)?;
    if tag != SEQUENCE || bits_tag != BIT_STRING || !rest.is_empty() {
        return None;
    }
    // No unused bits: a signature is whole bytes.
    let signature = bits.strip_prefix(&[0])?;

    let mut version = 0;
    if tbs_content.first() == Some(&VERSION_TAG) {
        let (_, explicit, rest) = element(tbs_content)?;
        version = small_integer(explicit)?;
        tbs_content = rest;
    }
    let (_, _serial, rest) = element(tbs_content)?;
    let (tag, inner_algorithm, rest) = element(rest)?;
    if tag != SEQUENCE || inner_algorithm != signature_algorithm {
        return None;
    }
    let (_, _, issuer, rest) = element_whole(rest)?;
    let (_, _validity, rest) = element(rest)?;
    let (_, _, subject, rest) = element_whole(rest)?;
    let (tag, spki_content, spki, mut rest) = element_whole(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, key_algorithm, spki_rest) = element(spki_content)?;
    let (bits_tag, key_bits, _) = element(spki_rest)?;
    if tag != SEQUENCE || bits_tag != BIT_STRING {
        return None;
    }
    let mut extensions: &[u8] = &[];
    while !rest.is_empty() {
        let (tag, content, after) = element(rest)?;
        if tag == EXTENSIONS_TAG {
            let (tag, list, _) = element(content)?;
            if tag != SEQUENCE {
                return None;
            }
            extensions = list;
        }
        rest = after;
    }
    Some(Parsed {
        version,
        tbs,
        signature_algorithm,
        signature,
        issuer,
        subject,
        spki,
        key_algorithm,
        public_key: key_bits.strip_prefix(&[0])?,
        extensions,
    })
}

/// A one-element INTEGER of at most 8 bytes, non-negative.
fn small_integer(der: &[u8]) -> Option<u64> {
    let (tag, bytes, _) = element(der)?;
    if tag != INTEGER || bytes.len() > 8 || bytes.first().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    Some(bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
}

/// What a certificate's extensions allow it as an issuer.
#[derive(Debug, Default, PartialEq)]
pub struct IssuerRights {
    /// basicConstraints `cA` is true.
    pub ca: bool,
    /// basicConstraints `pathLenConstraint`.
    pub path_len: Option<u64>,
    /// keyUsage is absent or has keyCertSign.
    pub signs_certificates: bool,
    /// A critical extension other than those two: not understood here,
    /// so the certificate must not be used.
    pub unknown_critical: bool,
}

/// The issuer rights that `extensions` (from [`Parsed`]) grant; `None` if
/// they cannot be read.
pub fn issuer_rights(mut extensions: &[u8]) -> Option<IssuerRights> {
    let mut rights = IssuerRights {
        signs_certificates: true,
        ..IssuerRights::default()
    };
    while !extensions.is_empty() {
        let (_, extension, after) = element(extensions)?;
        let (tag, oid, rest) = element(extension)?;
        let (mut tag_v, mut value, after_v) = element(rest)?;
        let mut critical = false;
        if tag_v == BOOLEAN {
            critical = value == [0xFF];
            (tag_v, value, _) = element(after_v)?;
        }
        if tag != OID || tag_v != OCTET_STRING {
            return None;
        }
        if oid == OID_BASIC_CONSTRAINTS {
            let (tag, mut fields, _) = element(value)?;
            if tag != SEQUENCE {
                return None;
            }
            if fields.first() == Some(&BOOLEAN) {
                let (_, ca, rest) = element(fields)?;
                rights.ca = ca == [0xFF];
                fields = rest;
            }
            if !fields.is_empty() {
                rights.path_len = Some(small_integer(fields)?);
            }
        } else if oid == OID_KEY_USAGE {
            let (tag, bits, _) = element(value)?;
            if tag != BIT_STRING {
                return None;
            }
            // keyCertSign is bit 5, counted from the first byte's top bit.
            rights.signs_certificates = bits.get(1).is_some_and(|b| b & 0x04 != 0);
        } else if critical {
            rights.unknown_critical = true;
        }
        extensions = after;
    }
    Some(rights)
}

/// The TBSCertificate's fields from `serialNumber` on (a v3 certificate's
/// version skipped); `None` if the DER cannot be read.
fn tbs_fields(der: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    if tbs.first() == Some(&VERSION_TAG) {
        return Some(element(tbs)?.2);
    }
    Some(tbs)
}

/// `notBefore` and `notAfter` of a DER certificate; `None` if it cannot be
/// read.
pub fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let mut rest = tbs_fields(der)?;
    // serialNumber, signature, issuer: skipped.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (tag, validity, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag_a, not_before, rest) = element(validity)?;
    let (tag_b, not_after, _) = element(rest)?;
    Some((time(tag_a, not_before)?, time(tag_b, not_after)?))
}

/// The host names a certificate names for libpq's `verify-full`.
#[derive(Debug, Default, PartialEq)]
pub struct SubjectNames {
    /// The subject's commonName values, as text.
    pub common_names: Vec<String>,
    /// A subjectAltName with a dNSName or iPAddress: then libpq ignores
    /// the Common Name.
    pub alt_names: bool,
}

/// The subject's Common Names and whether there are alternative names;
/// `None` if the certificate cannot be read.
pub fn subject_names(der: &[u8]) -> Option<SubjectNames> {
    let mut rest = tbs_fields(der)?;
    // serialNumber, signature, issuer, validity: skipped.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (tag, subject, mut rest) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut names = SubjectNames {
        common_names: common_names(subject)?,
        alt_names: false,
    };
    // subjectPublicKeyInfo, then the optional unique IDs and extensions.
    rest = element(rest)?.2;
    while !rest.is_empty() {
        let (tag, content, after) = element(rest)?;
        if tag == EXTENSIONS_TAG {
            names.alt_names = has_alt_names(content)?;
        }
        rest = after;
    }
    Some(names)
}

/// Each RDN's commonName attribute, as text.
fn common_names(mut subject: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !subject.is_empty() {
        let (_, mut set, after) = element(subject)?;
        while !set.is_empty() {
            let (_, attribute, next) = element(set)?;
            let (tag, oid, value) = element(attribute)?;
            if tag == OID && oid == OID_COMMON_NAME {
                let (kind, text, _) = element(value)?;
                out.push(directory_string(kind, text)?);
            }
            set = next;
        }
        subject = after;
    }
    Some(out)
}

/// A DirectoryString's text: the 8-bit forms as they are (refused if not
/// UTF-8), BMPString from UTF-16.
fn directory_string(kind: u8, text: &[u8]) -> Option<String> {
    match kind {
        UTF8_STRING | PRINTABLE_STRING | IA5_STRING | T61_STRING => {
            String::from_utf8(text.to_vec()).ok()
        }
        BMP_STRING if text.len().is_multiple_of(2) => String::from_utf16(
            &text
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        )
        .ok(),
        _ => None,
    }
}

/// `[3] EXPLICIT Extensions`: whether a subjectAltName lists a dNSName or
/// an iPAddress.
fn has_alt_names(explicit: &[u8]) -> Option<bool> {
    let (tag, mut extensions, _) = element(explicit)?;
    if tag != SEQUENCE {
        return None;
    }
    while !extensions.is_empty() {
        let (_, extension, after) = element(extensions)?;
        let (tag, oid, mut rest) = element(extension)?;
        if tag == OID && oid == OID_SUBJECT_ALT_NAME {
            // critical BOOLEAN DEFAULT FALSE, then the OCTET STRING.
            let (mut tag, mut value, after_value) = element(rest)?;
            if tag == BOOLEAN {
                rest = after_value;
                (tag, value, _) = element(rest)?;
            }
            if tag != OCTET_STRING {
                return None;
            }
            let (_, mut general_names, _) = element(value)?;
            while !general_names.is_empty() {
                let (tag, _, next) = element(general_names)?;
                if tag == DNS_NAME || tag == IP_ADDRESS {
                    return Some(true);
                }
                general_names = next;
            }
        }
        extensions = after;
    }
    Some(false)
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049) or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, the forms RFC 5280 allows.
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        (GENERALIZED_TIME, 14) => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    crate::time::to_time(
        year,
        field(0)?,
        field(2)?,
        field(4)?,
        field(6)?,
        field(8)?,
        0,
    )
}

/// Why a certificate's dates do not allow it now.
#[derive(Debug, PartialEq, Eq)]
pub enum DateProblem {
    Unreadable,
    NotValidYet,
    Expired,
}

/// Whether `now` lies within the certificate's validity.
pub fn check_dates(der: &[u8], now: SystemTime) -> Result<(), DateProblem> {
    let (not_before, not_after) = validity(der).ok_or(DateProblem::Unreadable)?;
    if now < not_before {
        return Err(DateProblem::NotValidYet);
    }
    if now > not_after {
        return Err(DateProblem::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// A minimal certificate-shaped DER: version, serial, algorithm,
    /// issuer, then validity with the given times.
    fn cert(not_before: (u8, &str), not_after: (u8, &str)) -> Vec<u8> {
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if content.len() < 0x80 {
                out.push(content.len() as u8);
            } else {
                out.push(0x82);
                out.extend_from_slice(&(content.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(content);
            out
        }
        let validity = [
            tlv(not_before.0, not_before.1.as_bytes()),
            tlv(not_after.0, not_after.1.as_bytes()),
        ]
        .concat();
        let tbs = [
            tlv(VERSION_TAG, &tlv(0x02, &[2])),
            tlv(0x02, &[1, 2, 3]),
            tlv(SEQUENCE, &tlv(0x06, &[42; 9])),
            tlv(SEQUENCE, &[0x31; 200]),
            tlv(SEQUENCE, &validity),
            tlv(SEQUENCE, &[]),
        ]
        .concat();
        tlv(
            SEQUENCE,
            &[tlv(SEQUENCE, &tbs), tlv(SEQUENCE, &[])].concat(),
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn reads_both_time_forms() {
        let der = cert(
            (UTC_TIME, "260101000000Z"),
            (GENERALIZED_TIME, "20360101000000Z"),
        );
        let (a, b) = validity(&der).unwrap();
        assert_eq!(a, at(1_767_225_600));
        assert_eq!(b, at(2_082_758_400));
        assert!(check_dates(&der, at(1_800_000_000)).is_ok());
        assert_eq!(
            check_dates(&der, at(1_700_000_000)),
            Err(DateProblem::NotValidYet)
        );
        assert_eq!(
            check_dates(&der, at(2_100_000_000)),
            Err(DateProblem::Expired)
        );
        let old = cert((UTC_TIME, "990101000000Z"), (UTC_TIME, "491231235959Z"));
        assert_eq!(validity(&old).unwrap().0, at(915_148_800));
    }

    #[test]
    fn damaged_certificates_are_unreadable() {
        let der = cert((UTC_TIME, "260101000000Z"), (UTC_TIME, "360101000000Z"));
        for cut in 0..der.len() {
            let _ = validity(&der[..cut]);
        }
        assert!(validity(&der[..der.len() / 2]).is_none());
        assert!(validity(&cert(
            (UTC_TIME, "2601010000Z"),
            (UTC_TIME, "360101000000Z")
        ))
        .is_none());
        assert!(validity(&cert((0x04, "260101000000Z"), (UTC_TIME, "360101000000Z"))).is_none());
        assert!(check_dates(b"\x30\x00", at(0)).is_err());
    }
}
