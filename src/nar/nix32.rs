//! Nix's base-32 encoding ("nix32"), used for store path hash parts and for
//! the `sha256:<52 chars>` hashes in narinfo files and NAR URLs.
//!
//! It is not RFC 4648 base-32: the alphabet omits `e o t u`, and the string
//! is produced from the most significant 5-bit group of the *last* byte
//! downwards (Nix's `printHash32`), so it must be reimplemented exactly.

use super::FormatError;

/// The 32 characters of Nix's base-32 alphabet, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps an ASCII byte to its digit value, or 0xff if it is not in the alphabet.
const REVERSE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Number of nix32 characters needed to encode `n_bytes` bytes
/// (52 for a 32-byte SHA-256 digest, 32 for a 20-byte store path hash).
pub fn encoded_len(n_bytes: usize) -> usize {
    if n_bytes == 0 {
        0
    } else {
        (n_bytes * 8 - 1) / 5 + 1
    }
}

/// Returns true if `c` is one of the 32 nix32 characters.
pub fn is_nix32_char(c: u8) -> bool {
    REVERSE[c as usize] != 0xff
}

/// Encodes `bytes` exactly as Nix's `printHash32` does.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = u32::from(bytes[i]) >> j;
        let high = if i + 1 < bytes.len() {
            u32::from(bytes[i + 1]) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a nix32 string produced by [`encode`].
///
/// Rejects characters outside the alphabet, lengths that no byte count
/// encodes to, and strings whose unused high bits are not zero (so every
/// byte string has exactly one accepted spelling).
pub fn decode(s: &str) -> Result<Vec<u8>, FormatError> {
    let err = |reason: String| FormatError::InvalidNix32 {
        input: s.to_string(),
        reason,
    };
    let chars = s.as_bytes();
    let n_bytes = chars.len() * 5 / 8;
    if encoded_len(n_bytes) != chars.len() {
        return Err(err(format!(
            "no byte string encodes to {} characters",
            chars.len()
        )));
    }
    let mut out = vec![0u8; n_bytes];
    for (n, &c) in chars.iter().rev().enumerate() {
        let digit = REVERSE[c as usize];
        if digit == 0xff {
            return Err(err(format!(
                "character {:?} is not in the alphabet",
                char::from(c)
            )));
        }
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let digit = u32::from(digit);
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < n_bytes {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(err(
                "its first character sets bits beyond the encoded length (non-canonical encoding)"
                    .to_string(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the empty string.
    const EMPTY_SHA256: [u8; 32] = [
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9,
        0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52,
        0xb8, 0x55,
    ];

    #[test]
    fn empty_sha256_vector() {
        let s = encode(&EMPTY_SHA256);
        assert_eq!(s, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode(&s).unwrap(), EMPTY_SHA256);
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for n in 0..100 {
            assert_eq!(encode(&vec![0xa5; n]).len(), encoded_len(n));
        }
    }

    #[test]
    fn small_values() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0]), "00");
        assert_eq!(encode(&[1]), "01");
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(encode(&[0x20]), "10");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn rejects_bad_input() {
        // 'e', 'o', 't', 'u' are not in the alphabet; neither are capitals.
        for bad in ["0e", "0o", "0t", "0u", "0A", "0-"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        // Impossible lengths.
        assert!(decode("0").is_err());
        assert!(decode("000").is_err());
        // "80" would need a 9th bit in a single byte.
        assert!(decode("80").is_err());
        let mut long = encode(&EMPTY_SHA256);
        long.replace_range(0..1, "z");
        assert!(decode(&long).is_err());
    }

    #[test]
    fn error_message_is_a_sentence() {
        let msg = decode("0e").unwrap_err().to_string();
        assert!(msg.contains("not in the alphabet"), "{msg}");
    }
}
