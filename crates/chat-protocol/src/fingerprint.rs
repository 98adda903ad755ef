//! How a certificate is named for pinning (SPEC 8): `sha256:` and the SHA-256 of the leaf
//! certificate's DER in 64 lowercase hex digits.
//!
//! The server logs it (`tls on 127.0.0.1:8443 (certificate sha256:...)`) and the client takes it
//! back (`--fingerprint sha256:...`), so that a class can trust a self-signed certificate
//! without a certificate authority: whoever reads the fingerprint off the teacher's screen knows
//! which certificate is the right one.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The prefix that names the hash, so that another one could be added without ambiguity.
const PREFIX: &str = "sha256:";

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// The SHA-256 of a certificate's DER bytes.
pub fn digest(der: &[u8]) -> Sha256Digest {
    Sha256::digest(der).into()
}

/// `sha256:` and 64 lowercase hex digits.
pub fn format(digest: &Sha256Digest) -> String {
    let mut text = String::with_capacity(PREFIX.len() + 64);
    text.push_str(PREFIX);
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The fingerprint of a certificate, as the server logs it.
pub fn of_certificate(der: &[u8]) -> String {
    format(&digest(der))
}

/// Reads a pinned fingerprint as people copy it: `sha256:` (optional), then 64 hex digits in any
/// case, with or without colons between the bytes (`AB:CD:...`, as `openssl x509 -fingerprint`
/// prints it).
pub fn parse(input: &str) -> Result<Sha256Digest, String> {
    let trimmed = input.trim();
    let hex = match trimmed.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => &trimmed[PREFIX.len()..],
        _ => trimmed,
    };
    let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
    let bad =
        || format!("\"{input}\" is not a SHA-256 fingerprint: expected sha256: and 64 hex digits");
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(digits.chunks(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_sha256_in_lowercase_hex() {
        // The SHA-256 of no bytes at all, a well-known value.
        assert_eq!(
            of_certificate(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_pin_is_read_whatever_its_case_and_colons() {
        let digest = digest(b"");
        let plain = format(&digest);
        let upper_with_colons: String = {
            let hex = plain.trim_start_matches(PREFIX).to_uppercase();
            let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
            format!("SHA256:{}", pairs.join(":"))
        };
        assert_eq!(parse(&plain), Ok(digest));
        assert_eq!(parse(&upper_with_colons), Ok(digest));
        assert_eq!(parse(plain.trim_start_matches(PREFIX)), Ok(digest));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "md5:00",
            &"g".repeat(64),
            &"0".repeat(66),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
