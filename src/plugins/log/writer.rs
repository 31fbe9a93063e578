//! JSON text written by hand for the log serializer: every logged request is written once, and a
//! generic serializer spent most of http-log's cost on the way (a call per key, a table look-up
//! per byte of every string). Keys are literals; strings are scanned sixteen bytes at a time for
//! what needs escaping (nearly nothing does) and copied whole.

use std::net::IpAddr;

use uuid::Uuid;

/// Appends JSON text to a buffer.
#[derive(Debug)]
pub struct Json<'a>(pub &'a mut Vec<u8>);

/// Whether a byte must be escaped in a JSON string.
#[inline]
fn special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether some byte of the word is [`special`] (exact for the word; bytes of 0x80 and above,
/// parts of UTF-8 sequences, never are).
#[inline]
fn has_special(x: u64) -> bool {
    // Bytes below n: (x - n·ONES) & !x & HIGH (the classic "has less" test, exact for n ≤ 128);
    // a byte equal to v is a zero byte of x ^ v·ONES, that is a byte below 1.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) != 0
}

/// Whether the word must be looked at byte by byte: something to escape, or (`ASCII`) a byte that
/// is not ASCII.
#[inline]
fn needs_care<const ASCII: bool>(x: u64) -> bool {
    has_special(x) || (ASCII && x & HIGH != 0)
}

impl Json<'_> {
    /// Text that is JSON already (keys and punctuation of the serializer's shape).
    #[inline]
    pub fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    /// Bytes that are JSON already (headers written by [`super::HeadersText`]).
    #[inline]
    pub fn text(&mut self, text: &[u8]) {
        self.0.extend_from_slice(text);
    }

    /// One JSON string made of `parts` one after the other.
    pub fn str_of(&mut self, parts: &[&str]) {
        self.0.push(b'"');
        for part in parts {
            self.escaped::<false>(part.as_bytes());
        }
        self.0.push(b'"');
    }

    /// A JSON string.
    pub fn str(&mut self, s: &str) {
        self.0.push(b'"');
        self.escaped::<false>(s.as_bytes());
        self.0.push(b'"');
    }

    /// A JSON string of bytes that may not be UTF-8 (a header value): as they are when they are
    /// (nearly always ASCII, checked in the same pass as escaping), else with U+FFFD for what is
    /// not.
    pub fn lossy(&mut self, bytes: &[u8]) {
        let start = self.0.len();
        self.0.push(b'"');
        if self.escaped::<true>(bytes) {
            self.0.push(b'"');
            return;
        }
        self.0.truncate(start);
        match std::str::from_utf8(bytes) {
            Ok(s) => self.str(s),
            Err(_) => self.str(&String::from_utf8_lossy(bytes)),
        }
    }

    /// `bytes` (UTF-8) escaped, without quotes. Eight bytes at a time: a word with nothing to
    /// escape (nearly all) costs a few arithmetic instructions, and clean runs are copied whole.
    /// `ASCII`: stops and answers false at the first byte that is not ASCII (the caller then checks
    /// the bytes as UTF-8), leaving what it wrote.
    fn escaped<const ASCII: bool>(&mut self, bytes: &[u8]) -> bool {
        let mut start = 0;
        for (n, word) in bytes.chunks(8).enumerate() {
            // The last bytes padded with spaces (nothing to escape) make one more word: most
            // strings are short, and this spares them a byte-by-byte pass.
            let x = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_else(|_| {
                let mut last = [b' '; 8];
                last[..word.len()].copy_from_slice(word);
                last
            }));
            if !needs_care::<ASCII>(x) {
                continue;
            }
            for (i, &b) in word.iter().enumerate() {
                if ASCII && !b.is_ascii() {
                    return false;
                }
                if special(b) {
                    self.0.extend_from_slice(&bytes[start..n * 8 + i]);
                    self.escape(b);
                    start = n * 8 + i + 1;
                }
            }
        }
        self.0.extend_from_slice(&bytes[start..]);
        true
    }

    /// The escape of one byte [`special`] says must be escaped, as serde_json writes it.
    #[cold]
    fn escape(&mut self, b: u8) {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
                return;
            }
        };
        self.0.extend_from_slice(&[b'\\', short]);
    }

    /// A JSON string, or `null`.
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    pub fn u64(&mut self, n: u64) {
        self.0.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    pub fn i64(&mut self, n: i64) {
        self.0.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// A UUID as a hyphenated JSON string.
    pub fn uuid(&mut self, id: Uuid) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.0.push(b'"');
        self.0.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
        self.0.push(b'"');
    }

    /// An address as a JSON string.
    pub fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.0.push(b'"');
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    if octet >= 100 {
                        self.0.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.0.push(b'0' + octet / 10 % 10);
                    }
                    self.0.push(b'0' + octet % 10);
                }
                self.0.push(b'"');
            }
            IpAddr::V6(v6) => self.str(&v6.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(f: impl FnOnce(&mut Json<'_>)) -> String {
        let mut out = Vec::new();
        f(&mut Json(&mut out));
        String::from_utf8(out).expect("UTF-8")
    }

    proptest! {
        /// Any string, and any bytes as a header value, is written as serde_json reads it back.
        #[test]
        fn strings_read_back_as_they_were(
            s in prop_oneof![".{0,80}", "[a-z\"\\\\\\x00-\\x1f\\x7f\u{e9}\u{1F600}]{0,40}"],
            bytes in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), 0u8..0x20], 0..80),
        ) {
            let text = written(|j| j.str(&s));
            prop_assert_eq!(serde_json::from_str::<String>(&text).expect("JSON"), s.clone());
            prop_assert_eq!(&text, &serde_json::to_string(&s).expect("JSON"));
            let text = written(|j| j.lossy(&bytes));
            prop_assert_eq!(serde_json::from_str::<String>(&text).expect("JSON"), String::from_utf8_lossy(&bytes).into_owned());
        }
    }

    #[test]
    fn every_control_byte_and_quote_is_escaped_as_serde_json_does() {
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "\u{e9}\u{1F600}";
        for s in [all.as_str(), "\"\\", "0123456789abcdef\"0123456789abcdef\n", "plain, longer than sixteen bytes"] {
            assert_eq!(written(|j| j.str(s)), serde_json::to_string(s).expect("JSON"));
        }
    }

    #[test]
    fn addresses_and_ids_are_written_as_their_display() {
        for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "2001:db8::8a2e:370:7334"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(written(|j| j.ip(ip)), format!("\"{ip}\""));
        }
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(written(|j| j.uuid(id)), format!("\"{id}\""));
        assert_eq!(
            written(|j| {
                j.u64(u64::MAX);
                j.i64(-1)
            }),
            format!("{}-1", u64::MAX)
        );
    }
}
