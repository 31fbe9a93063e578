//! JSON text written by hand for the log serializer: every logged request is written once, and a
//! generic serializer spent most of http-log's cost on the way (a call per key, a table look-up
//! per byte of every string). Keys are literals; strings are scanned eight bytes at a time for
//! what needs escaping (nearly nothing does) and copied whole.

use std::net::IpAddr;

use uuid::Uuid;

/// Each octet's decimal digits (left-aligned) and their count.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let n = i as u8;
        table[i] = if n >= 100 {
            ([b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10], 3)
        } else if n >= 10 {
            ([b'0' + n / 10, b'0' + n % 10, 0], 2)
        } else {
            ([b'0' + n, 0, 0], 1)
        };
        i += 1;
    }
    table
};

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

/// The bytes of a word that need care: [`special`] ones, and (`ASCII`) those that are not ASCII.
/// Zero when none does (exact for the word as a whole).
#[inline]
fn care<const ASCII: bool>(x: u64) -> u64 {
    // Bytes below n: (x - n·ONES) & !x & HIGH (the classic "has less" test, exact for n ≤ 128);
    // a byte equal to v is a zero byte of x ^ v·ONES, that is a byte below 1.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let special = below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1);
    if ASCII { special | (x & HIGH) } else { special }
}

/// Whether some byte of `bytes` needs care (see [`care`]), eight bytes at a time with no branch
/// per word: most strings written are short and clean, and are then copied whole.
#[inline]
fn needs_care<const ASCII: bool>(bytes: &[u8]) -> bool {
    let (words, rest) = bytes.as_chunks::<8>();
    let mut found = 0;
    for word in words {
        found |= care::<ASCII>(u64::from_le_bytes(*word));
    }
    if !rest.is_empty() {
        // The last bytes as one more word: the last eight (some seen already) when there are that
        // many, else these bytes over spaces (nothing to escape).
        let last = match bytes.last_chunk::<8>() {
            Some(word) => u64::from_le_bytes(*word),
            None => rest.iter().rev().fold(ONES * u64::from(b' '), |w, &b| (w << 8) | u64::from(b)),
        };
        found |= care::<ASCII>(last);
    }
    found != 0
}

impl Json<'_> {
    /// Text that is JSON already (keys and punctuation of the serializer's shape).
    #[inline]
    pub fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    /// A JSON string.
    pub fn str(&mut self, s: &str) {
        self.0.push(b'"');
        self.escaped(s.as_bytes());
        self.0.push(b'"');
    }

    /// A string with nothing to escape by its grammar (an HTTP method, a name of the serializer's
    /// own), quoted and copied without a look.
    pub fn token(&mut self, s: &str) {
        self.0.push(b'"');
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(b'"');
    }

    /// The inside of a JSON string (the caller writes the quotes): a string escaped.
    pub fn str_inner(&mut self, s: &str) {
        self.escaped(s.as_bytes());
    }

    /// Whether bytes are a JSON string's inside as they are: ASCII with nothing to escape.
    #[inline(always)]
    pub fn plain(bytes: &[u8]) -> bool {
        !needs_care::<true>(bytes)
    }

    /// A JSON string of bytes that may not be UTF-8 (a header value): as they are when they are
    /// (nearly always ASCII, checked in the same pass as escaping), else with U+FFFD for what is
    /// not. Inlined: it runs once per header, in the header loop.
    #[inline(always)]
    pub fn lossy(&mut self, bytes: &[u8]) {
        if !needs_care::<true>(bytes) {
            self.0.push(b'"');
            self.0.extend_from_slice(bytes);
            self.0.push(b'"');
            return;
        }
        self.lossy_slowly(bytes);
    }

    #[cold]
    fn lossy_slowly(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(s) => self.str(s),
            Err(_) => self.str(&String::from_utf8_lossy(bytes)),
        }
    }

    /// `bytes` (UTF-8) escaped, without quotes: copied whole when nothing needs escaping (nearly
    /// always), else byte by byte.
    #[inline]
    fn escaped(&mut self, bytes: &[u8]) {
        if needs_care::<false>(bytes) {
            self.escaped_slowly(bytes);
        } else {
            self.0.extend_from_slice(bytes);
        }
    }

    #[cold]
    fn escaped_slowly(&mut self, bytes: &[u8]) {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if special(b) {
                self.0.extend_from_slice(&bytes[start..i]);
                self.escape(b);
                start = i + 1;
            }
        }
        self.0.extend_from_slice(&bytes[start..]);
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

    pub fn u64(&mut self, n: u64) {
        // One digit (most latencies in milliseconds, on a local network) needs no formatting.
        if n < 10 {
            self.0.push(b'0' + n as u8);
            return;
        }
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
                // Written on the stack from a table of the octets' digits, then copied once.
                let mut text = [0u8; 17];
                let mut n = 0;
                for octet in v4.octets() {
                    let (digits, len) = OCTETS[usize::from(octet)];
                    text[n] = if n == 0 { b'"' } else { b'.' };
                    text[n + 1..n + 4].copy_from_slice(&digits);
                    n += 1 + usize::from(len);
                }
                text[n] = b'"';
                self.0.extend_from_slice(&text[..=n]);
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
        for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.20.100.9", "::1", "2001:db8::8a2e:370:7334"] {
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
        assert_eq!(
            written(|j| {
                for n in [0, 9, 10, 99, 100] {
                    j.u64(n);
                    j.raw(",");
                }
            }),
            "0,9,10,99,100,"
        );
    }
}
