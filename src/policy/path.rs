//! Path safety: a path is checked, never rewritten. Anything a server might resolve differently
//! from us (dot segments in any spelling, encoded slashes or backslashes, empty segments, control
//! characters, broken or double percent-encoding, non-UTF-8) is refused, so the path Azure DevOps
//! receives is exactly the one that was matched.

/// Deeper paths are refused; Azure DevOps URLs have a dozen segments at most.
pub const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    EmptySegment,
    DotSegment,
    EncodedSeparator,
    Backslash,
    ControlCharacter,
    BadPercentEncoding,
    DoubleEncoding,
    NotUtf8,
    TooDeep,
    /// `%3B`: an encoded `;`, read as a path parameter's start by some servers after decoding.
    EncodedParameter,
    /// A Unicode character a server may fold to `.`, `/` or `\` (full-width dots and slashes).
    LookAlike,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "The path must start with '/'",
            PathError::EmptySegment => "The path has an empty segment ('//')",
            PathError::DotSegment => "The path has a '.' or '..' segment (in some spelling)",
            PathError::EncodedSeparator => "The path has an encoded slash or backslash (%2F, %5C)",
            PathError::Backslash => "The path has a backslash",
            PathError::ControlCharacter => "The path has a control character",
            PathError::BadPercentEncoding => "The path has an invalid percent-encoding",
            PathError::DoubleEncoding => {
                "The path has a double percent-encoding (%25 followed by hex digits)"
            }
            PathError::NotUtf8 => "The path does not decode to UTF-8",
            PathError::TooDeep => "The path has too many segments",
            PathError::EncodedParameter => "The path has an encoded semicolon (%3B)",
            PathError::LookAlike => {
                "The path has a Unicode look-alike of '.', '/' or '\\' (such as a full-width dot)"
            }
        }
    }
}

/// The segments of a checked path, as raw (still percent-encoded) slices. A trailing slash is
/// not a segment: `/a/b/` and `/a/b` name the same thing for matching.
pub struct Segments<'a> {
    pub(super) items: [&'a str; MAX_SEGMENTS],
    pub(super) len: usize,
    /// Bit i set: segment i holds percent-escapes (only those need decoding to compare).
    pub(super) escaped: u32,
}

impl<'a> Segments<'a> {
    /// Checks `path` and splits it. Allocates only to validate UTF-8 of percent-encoded segments.
    pub fn parse(path: &'a str) -> Result<Self, PathError> {
        let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        let mut segments = Segments {
            items: [""; MAX_SEGMENTS],
            len: 0,
            escaped: 0,
        };
        if rest.is_empty() {
            return Ok(segments);
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let bytes = rest.as_bytes();
        let mut start = 0;
        loop {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(bytes.len(), |at| start + at);
            let raw = &rest[start..end];
            let escaped = check_segment(raw)?;
            if segments.len == MAX_SEGMENTS {
                return Err(PathError::TooDeep);
            }
            segments.items[segments.len] = raw;
            segments.escaped |= u32::from(escaped) << segments.len;
            segments.len += 1;
            if end == bytes.len() {
                return Ok(segments);
            }
            start = end + 1;
        }
    }

    pub fn as_slice(&self) -> &[&'a str] {
        &self.items[..self.len]
    }
}

/// Checks one raw segment; tells whether it holds percent-escapes.
pub(super) fn check_segment(raw: &str) -> Result<bool, PathError> {
    if raw.is_empty() {
        return Err(PathError::EmptySegment);
    }
    let bytes = raw.as_bytes();
    let mut has_escape = false;
    let mut parameters_at = bytes.len();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' if parameters_at == bytes.len() => parameters_at = i,
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'%' => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let (Some(hi), Some(lo)) = (hex(hi), hex(lo)) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::EncodedParameter),
                    b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
                    // `%25` then two hex digits decodes, in a second pass, to another escape.
                    b'%' if bytes.get(i + 3).copied().and_then(hex).is_some()
                        && bytes.get(i + 4).copied().and_then(hex).is_some() =>
                    {
                        return Err(PathError::DoubleEncoding);
                    }
                    _ => {}
                }
                has_escape = true;
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // Servers that honour path parameters (`/..;x/`) see the part before ';' as the segment,
    // and IIS drops trailing dots and spaces from it (`..%20`, `...`): what is left must not be
    // nothing, `.` or `..`.
    let name = &raw[..parameters_at];
    if !has_escape {
        return if name.trim_end_matches('.').is_empty() {
            Err(PathError::DotSegment)
        } else {
            Ok(false)
        };
    }
    let decoded: Vec<u8> = Decoded::new(name).collect();
    let Ok(decoded) = std::str::from_utf8(&decoded) else {
        return Err(PathError::NotUtf8);
    };
    if decoded.trim_end_matches(['.', ' ']).is_empty() {
        return Err(PathError::DotSegment);
    }
    if decoded.chars().any(is_look_alike) {
        return Err(PathError::LookAlike);
    }
    if parameters_at < raw.len() {
        let all: Vec<u8> = Decoded::new(raw).collect();
        if std::str::from_utf8(&all).is_err() {
            return Err(PathError::NotUtf8);
        }
    }
    Ok(true)
}

/// Characters that Unicode normalization (NFKC) or a best-fit code page turns into `.`, `/` or
/// `\\`, which IIS and ASP.NET may apply before resolving a path.
fn is_look_alike(c: char) -> bool {
    matches!(
        c,
        '\u{2024}' // one dot leader
            | '\u{FE52}' // small full stop
            | '\u{FF0E}' // full-width full stop
            | '\u{2044}' // fraction slash
            | '\u{2215}' // division slash
            | '\u{29F8}' // big solidus
            | '\u{FF0F}' // full-width solidus
            | '\u{2216}' // set minus
            | '\u{29F5}' // reverse solidus operator
            | '\u{FE68}' // small reverse solidus
            | '\u{FF3C}' // full-width reverse solidus
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a checked segment byte by byte.
pub(super) struct Decoded<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Decoded<'a> {
    pub(super) fn new(raw: &'a str) -> Self {
        Self {
            bytes: raw.as_bytes(),
            at: 0,
        }
    }
}

impl Iterator for Decoded<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                self.bytes.get(self.at + 1).copied().and_then(hex),
                self.bytes.get(self.at + 2).copied().and_then(hex),
            )
        {
            self.at += 3;
            return Some(hi << 4 | lo);
        }
        self.at += 1;
        Some(b)
    }
}

/// Orders a lower-case key against a raw (unescaped) segment as if the segment were lower-cased.
pub(super) fn compare_lowercase(key: &str, raw: &str) -> std::cmp::Ordering {
    key.bytes().cmp(raw.bytes().map(|b| b.to_ascii_lowercase()))
}

/// Compares a raw segment, decoded, with a literal, ignoring ASCII case. `maybe_escaped` false
/// promises the segment holds no '%'.
pub(super) fn segment_eq(raw: &str, maybe_escaped: bool, literal: &str) -> bool {
    // Decoding only shortens a segment, and a checked raw '%' always starts an escape (a literal
    // never holds one followed by two hex digits): equal lengths compare as plain text, a
    // shorter raw segment cannot match, and only a longer one with escapes needs decoding.
    match raw.len().cmp(&literal.len()) {
        std::cmp::Ordering::Equal => raw.eq_ignore_ascii_case(literal),
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => {
            maybe_escaped && raw.contains('%') && {
                let mut decoded = Decoded::new(raw);
                let mut literal = literal.bytes();
                loop {
                    match (decoded.next(), literal.next()) {
                        (None, None) => break true,
                        (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
                        _ => break false,
                    }
                }
            }
        }
    }
}
