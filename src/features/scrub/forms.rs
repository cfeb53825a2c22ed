//! The whole-value encodings of a secret that a client could decode back to it: the value itself,
//! the parts of base64/base64url that only the secret's bits decide (at each of the three byte
//! alignments the secret can have inside a longer base64 run, which is what `base64(user:secret)`
//! is), and lower/upper-case hex. Per-character escapes (percent, JSON) are not listed here: the
//! scanner decodes those before matching (see `scan.rs`).

use base64::Engine;
use zeroize::Zeroizing;

/// A base64 core shorter than this is not searched for: a few characters would match ordinary
/// text, and reveal only a few bits of a secret that short anyway.
const MIN_CORE: usize = 4;

/// Every form of `value` (deduplicated into `forms`).
pub fn add_forms(forms: &mut Vec<Zeroizing<Vec<u8>>>, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    let mut push = |form: Zeroizing<Vec<u8>>| {
        if !form.is_empty() && !forms.contains(&form) {
            forms.push(form);
        }
    };
    push(Zeroizing::new(value.to_vec()));
    for alignment in 0..3 {
        if let Some(core) = base64_core(value, alignment) {
            let url: Zeroizing<Vec<u8>> = Zeroizing::new(
                core.iter()
                    .map(|&b| match b {
                        b'+' => b'-',
                        b'/' => b'_',
                        b => b,
                    })
                    .collect(),
            );
            push(core);
            push(url);
        }
    }
    // Hex of a value under four bytes would be a short run of digits, common in any text.
    if value.len() >= MIN_CORE {
        push(Zeroizing::new(hex::encode(value).into_bytes()));
        push(Zeroizing::new(hex::encode_upper(value).into_bytes()));
    }
}

/// The base64 characters that depend only on `value` when it starts `alignment` bytes after a
/// multiple of three inside a longer encoded run.
fn base64_core(value: &[u8], alignment: usize) -> Option<Zeroizing<Vec<u8>>> {
    let mut input = Zeroizing::new(vec![0u8; alignment]);
    input.extend_from_slice(value);
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&input[..]));
    // Character i carries bits 6i..6i+6; the secret holds bits 8a..8(a+n).
    let first_bit = 8 * alignment;
    let end_bit = 8 * (alignment + value.len());
    let from = first_bit.div_ceil(6);
    let to = end_bit / 6;
    (to >= from + MIN_CORE).then(|| Zeroizing::new(encoded.as_bytes()[from..to].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_cores_are_found_at_every_alignment() {
        let secret = b"s3cr3t-value";
        let mut forms = Vec::new();
        add_forms(&mut forms, secret);
        for prefix in ["", "a", "ab", "abc", "user:"] {
            for suffix in ["", "x", "xy"] {
                let whole = [prefix.as_bytes(), secret, suffix.as_bytes()].concat();
                for engine in [
                    base64::engine::general_purpose::STANDARD,
                    base64::engine::general_purpose::URL_SAFE,
                ] {
                    let encoded = engine.encode(&whole);
                    assert!(
                        forms
                            .iter()
                            .any(|f| encoded.as_bytes().windows(f.len()).any(|w| w == &f[..])),
                        "no core found in {encoded}"
                    );
                }
            }
        }
    }
}
