//! AWS Signature Version 4 (the `Authorization` header form), as pure functions over the request
//! exactly as it is sent: the canonical URI and query, the canonical headers, the string to sign
//! and the derived signing key.
//!
//! The wire form and the signed form are made the same on purpose: [`canonical_query`] is also
//! the query the proxy sends (decoded and encoded once in AWS's form, sorted), and for S3
//! [`s3_path`] is also the path it sends. So whatever checks the signature (AWS itself, or
//! botocore over the received request) sees the bytes that were signed.
//!
//! Proven by AWS's published test vectors (the unit tests below): the SigV4 test suite of
//! `awslabs/aws-c-auth` (`tests/aws-signing-test-suite/v4/*`) and the S3 examples of the S3 API
//! reference ("Signature Calculations for the Authorization Header: Transferring Payload in a
//! Single Chunk").
//!
//! The signing key is derived into `Zeroizing` buffers; nothing here logs or formats a key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// `x-amz-content-sha256` of a body that is streamed without a hash (S3).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// The SHA-256 of nothing, in hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How the service canonicalises the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathStyle {
    /// S3: the path as sent (in AWS's one-time encoding, see [`s3_path`]), never normalised.
    S3,
    /// Every other service: dot and empty segments removed, then encoded once more.
    Normalized,
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// AWS's URI encoding: unreserved bytes kept, `/` kept when `keep_slash`, the rest `%XX`
/// (uppercase hex).
pub fn uri_encode(bytes: &[u8], keep_slash: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        if is_unreserved(byte) || (keep_slash && byte == b'/') {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 15)] as char);
        }
    }
}

/// Percent-decodes `text` (a `%` not followed by two hex digits stays as it is).
fn percent_decode(text: &str, plus_as_space: bool) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%'
            && index + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2]))
        {
            out.push((high * 16 + low) as u8);
            index += 3;
            continue;
        }
        out.push(if byte == b'+' && plus_as_space { b' ' } else { byte });
        index += 1;
    }
    out
}

/// S3's form of a path: decoded, then encoded once in AWS's form. The proxy sends this path to
/// an S3 route's upstream (S3 decodes either form to the same key) and signs it as it is.
pub fn s3_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    uri_encode(&percent_decode(path, false), true, &mut out);
    out
}

/// RFC 3986 dot-segment removal, also dropping empty segments (as AWS services do).
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical URI of `path` (the path as sent).
pub fn canonical_uri(path: &str, style: PathStyle) -> String {
    match style {
        PathStyle::S3 if path.is_empty() => "/".to_string(),
        PathStyle::S3 => path.to_string(),
        PathStyle::Normalized => {
            let mut out = String::with_capacity(path.len() + 8);
            uri_encode(normalize_path(path).as_bytes(), true, &mut out);
            out
        }
    }
}

/// The canonical query: every `name=value` decoded (`+` as a space), encoded in AWS's form and
/// sorted by name, then value. It is also the query the proxy sends.
pub fn canonical_query(query: &str) -> Zeroizing<String> {
    let mut pairs: Vec<(String, Zeroizing<String>)> = Vec::new();
    for piece in query.split('&').filter(|piece| !piece.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let mut encoded_name = String::new();
        uri_encode(&percent_decode(name, true), false, &mut encoded_name);
        let mut encoded_value = Zeroizing::new(String::new());
        uri_encode(&Zeroizing::new(percent_decode(value, true)), false, &mut encoded_value);
        pairs.push((encoded_name, encoded_value));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = Zeroizing::new(String::with_capacity(query.len() + 16));
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The request as signed: canonical pieces, headers as `(lowercase name, value)`.
pub struct Canonical<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub payload_hash: &'a str,
}

impl Canonical<'_> {
    /// The canonical request text and the `SignedHeaders` list.
    pub fn request(&self) -> (Zeroizing<String>, String) {
        let mut headers: Vec<(&str, String)> = Vec::new();
        for (name, value) in self.headers {
            // Values trimmed, inner runs of spaces collapsed; repeated names joined with `,`.
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            match headers.iter_mut().find(|(known, _)| known == name) {
                Some((_, joined)) => {
                    joined.push(',');
                    joined.push_str(&value);
                }
                None => headers.push((name, value)),
            }
        }
        headers.sort_by(|a, b| a.0.cmp(b.0));
        let signed = headers.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(";");
        let mut text = Zeroizing::new(String::with_capacity(256));
        for piece in [self.method, "\n", self.uri, "\n", self.query, "\n"] {
            text.push_str(piece);
        }
        for (name, value) in &headers {
            text.push_str(name);
            text.push(':');
            text.push_str(value);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&signed);
        text.push('\n');
        text.push_str(self.payload_hash);
        (text, signed)
    }
}

/// Who signs, and where: the credential scope's pieces.
pub struct Scope<'a> {
    /// `YYYYMMDD'T'HHMMSS'Z'`.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Scope<'_> {
    fn date(&self) -> &str {
        &self.amz_date[..8.min(self.amz_date.len())]
    }

    /// `20150830/us-east-1/service/aws4_request`.
    pub fn credential_scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date(), self.region, self.service)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The hex signature of `canonical` under `secret_access_key`, with its `SignedHeaders`.
pub fn signature(canonical: &Canonical<'_>, scope: &Scope<'_>, secret_access_key: &str) -> (String, String) {
    let (request, signed_headers) = canonical.request();
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        scope.amz_date,
        scope.credential_scope(),
        hex::encode(Sha256::digest(request.as_bytes()))
    );
    let secret = Zeroizing::new(format!("AWS4{secret_access_key}"));
    let key = hmac_sha256(secret.as_bytes(), scope.date().as_bytes());
    let key = hmac_sha256(&*key, scope.region.as_bytes());
    let key = hmac_sha256(&*key, scope.service.as_bytes());
    let key = hmac_sha256(&*key, b"aws4_request");
    let signature = hmac_sha256(&*key, string_to_sign.as_bytes());
    (hex::encode(*signature), signed_headers)
}

/// The `Authorization` header value.
pub fn authorization(access_key_id: &str, scope: &Scope<'_>, signed_headers: &str, signature: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{}, SignedHeaders={signed_headers}, Signature={signature}",
        scope.credential_scope()
    )
}

/// `YYYYMMDD'T'HHMMSS'Z'` for `at`.
pub fn amz_date(at: std::time::SystemTime) -> String {
    // `2015-08-30T12:36:00Z` without the separators.
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Vectors from AWS: `awslabs/aws-c-auth` `tests/aws-signing-test-suite/v4/<name>/`
    //! (`request.txt`, `header-canonical-request.txt`, `header-signature.txt`; key `AKIDEXAMPLE`,
    //! region `us-east-1`, service `service`, 2015-08-30T12:36:00Z), and the S3 API reference's
    //! single-chunk examples (`examplebucket`, 2013-05-24T00:00:00Z).
    use super::*;

    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_DATE: &str = "20150830T123600Z";
    const S3_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// Signs a suite request (`path` and `query` as in `request.txt`) and checks the canonical
    /// request and the signature against the suite's files.
    fn suite(
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        payload: &str,
        canonical: &str,
        expected: &str,
    ) {
        let mut list = vec![("host", "example.amazonaws.com"), ("x-amz-date", SUITE_DATE)];
        list.extend_from_slice(extra);
        let headers = headers(&list);
        let uri = canonical_uri(path, PathStyle::Normalized);
        let query = canonical_query(query);
        let request = Canonical {
            method,
            uri: &uri,
            query: &query,
            headers: &headers,
            payload_hash: payload,
        };
        assert_eq!(request.request().0.as_str(), canonical);
        let scope = Scope {
            amz_date: SUITE_DATE,
            region: "us-east-1",
            service: "service",
        };
        assert_eq!(signature(&request, &scope, SUITE_SECRET).0, expected);
    }

    #[test]
    fn get_vanilla() {
        suite(
            "GET",
            "/",
            "",
            &[],
            EMPTY_SHA256,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
    }

    #[test]
    fn get_vanilla_query_order_key_case() {
        suite(
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            &[],
            EMPTY_SHA256,
            "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        );
    }

    #[test]
    fn get_vanilla_query_unreserved() {
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        suite(
            "GET",
            "/",
            &format!("{unreserved}={unreserved}"),
            &[],
            EMPTY_SHA256,
            &format!(
                "GET\n/\n{unreserved}={unreserved}\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
        );
    }

    #[test]
    fn get_vanilla_utf8_query() {
        suite(
            "GET",
            "/",
            "\u{1234}=bar",
            &[],
            EMPTY_SHA256,
            "GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        );
    }

    #[test]
    fn get_utf8() {
        suite(
            "GET",
            "/\u{1234}",
            "",
            &[],
            EMPTY_SHA256,
            "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        );
    }

    #[test]
    fn get_space_normalized() {
        suite(
            "GET",
            "/example space/",
            "",
            &[],
            EMPTY_SHA256,
            "GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
        );
    }

    #[test]
    fn normalize_path_slashes_and_relative() {
        // get-slashes-normalized and get-relative-relative-normalized.
        suite(
            "GET",
            "//example//",
            "",
            &[],
            EMPTY_SHA256,
            "GET\n/example/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
        );
        suite(
            "GET",
            "/example1/example2/../..",
            "",
            &[],
            EMPTY_SHA256,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
    }

    #[test]
    fn post_x_www_form_urlencoded() {
        let hash = hex::encode(Sha256::digest(b"Param1=value1"));
        assert_eq!(hash, "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e");
        suite(
            "POST",
            "/",
            "",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "13"),
                ("x-amz-content-sha256", &hash),
            ],
            &hash,
            "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e\nx-amz-date:20150830T123600Z\n\ncontent-length;content-type;host;x-amz-content-sha256;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
            "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
        );
    }

    #[test]
    fn post_sts_header_before() {
        let token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";
        suite(
            "POST",
            "/",
            "",
            &[("x-amz-security-token", token)],
            EMPTY_SHA256,
            &format!(
                "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:{token}\n\nhost;x-amz-date;x-amz-security-token\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
        );
    }

    fn s3(method: &str, path: &str, query: &str, extra: &[(&str, &str)], payload: &str) -> (String, String) {
        let mut list = vec![
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", payload),
        ];
        list.extend_from_slice(extra);
        let headers = headers(&list);
        let path = s3_path(path);
        let uri = canonical_uri(&path, PathStyle::S3);
        let query = canonical_query(query);
        let request = Canonical {
            method,
            uri: &uri,
            query: &query,
            headers: &headers,
            payload_hash: payload,
        };
        let scope = Scope {
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            service: "s3",
        };
        let (signature, signed) = signature(&request, &scope, S3_SECRET);
        (
            authorization("AKIAIOSFODNN7EXAMPLE", &scope, &signed, &signature),
            signature,
        )
    }

    #[test]
    fn s3_get_object() {
        let (authorization, _) = s3("GET", "/test.txt", "", &[("range", "bytes=0-9")], EMPTY_SHA256);
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn s3_list_objects() {
        let (_, signature) = s3("GET", "/", "max-keys=2&prefix=J", &[], EMPTY_SHA256);
        assert_eq!(
            signature,
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn s3_put_object_encodes_the_key_once() {
        let payload = hex::encode(Sha256::digest(b"Welcome to Amazon S3."));
        assert_eq!(s3_path("/test$file.text"), "/test%24file.text");
        assert_eq!(s3_path("/test%24file.text"), "/test%24file.text");
        let (_, signature) = s3(
            "PUT",
            "/test$file.text",
            "",
            &[
                ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            &payload,
        );
        assert_eq!(
            signature,
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn query_is_decoded_and_encoded_once() {
        assert_eq!(canonical_query("b=2&a=x%2fy&a=+&c").as_str(), "a=%20&a=x%2Fy&b=2&c=");
        assert_eq!(
            amz_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160)),
            SUITE_DATE
        );
    }
}
