//! Log line formats, text and JSON, written straight into the line buffer.
//!
//! `tracing_subscriber`'s stock formatters spend several microseconds a line on styling and
//! padding. These write the same information (timestamp, level, target, fields) with plain
//! appends: `key=value` pairs, or one JSON object per line with the fields flattened. The audit
//! line (`audit`) uses the same field writers without going through `tracing`.

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A field name known in advance, spelled out for both formats (` name=` and `,"name":`) so a
/// field costs one append before its value instead of three. Made by `key!`.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    text: &'static str,
    json: &'static str,
}

impl Key {
    #[doc(hidden)]
    pub const fn new(text: &'static str, json: &'static str) -> Self {
        Self { text, json }
    }
}

/// A [`Key`] for a field name made of letters, digits and `_` (nothing to escape in JSON).
macro_rules! key {
    ($name:literal) => {
        $crate::telemetry::log_format::Key::new(
            concat!(" ", $name, "="),
            concat!(",\"", $name, "\":"),
        )
    };
}
pub(crate) use key;

/// What precedes a field's value: a [`Key`], or a name only known when the line is written.
pub trait FieldName: Copy {
    fn write(self, format: LineFormat, out: &mut impl fmt::Write) -> fmt::Result;
}

impl FieldName for Key {
    fn write(self, format: LineFormat, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str(match format {
            LineFormat::Text => self.text,
            LineFormat::Json => self.json,
        })
    }
}

impl FieldName for &str {
    fn write(self, format: LineFormat, out: &mut impl fmt::Write) -> fmt::Result {
        match format {
            LineFormat::Text => {
                out.write_char(' ')?;
                out.write_str(self)?;
                out.write_char('=')
            }
            LineFormat::Json => json_key(out, self),
        }
    }
}

/// A value written on many lines (a client's name, an allowlist rule), quoted and escaped once
/// for each format instead of on every line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    text: Box<str>,
    json: Box<str>,
}

impl Rendered {
    pub fn new(value: &str) -> Self {
        let mut text = String::new();
        let mut json = String::new();
        // Writing into a String cannot fail.
        let _ = LineFormat::Text.str_value(&mut text, value);
        let _ = LineFormat::Json.str_value(&mut json, value);
        Self {
            text: text.into(),
            json: json.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    Text,
    Json,
}

impl LineFormat {
    /// Timestamp, level and target: everything before a line's fields.
    pub fn start(self, out: &mut impl fmt::Write, level: &Level, target: &str) -> fmt::Result {
        let mut timestamp = [0u8; TIMESTAMP_LEN];
        let now = rfc3339_micros(SystemTime::now(), &mut timestamp);
        match self {
            LineFormat::Text => {
                out.write_str(now)?;
                out.write_str(padded_level(level))?;
                out.write_str(target)?;
                out.write_char(':')
            }
            LineFormat::Json => {
                out.write_str("{\"timestamp\":\"")?;
                out.write_str(now)?;
                out.write_str("\",\"level\":\"")?;
                out.write_str(level.as_str())?;
                out.write_str("\",\"target\":")?;
                json_string(out, target)
            }
        }
    }

    pub fn str_field(
        self,
        out: &mut impl fmt::Write,
        name: impl FieldName,
        value: &str,
    ) -> fmt::Result {
        name.write(self, out)?;
        self.str_value(out, value)
    }

    fn str_value(self, out: &mut impl fmt::Write, value: &str) -> fmt::Result {
        match self {
            LineFormat::Text => {
                if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
                    out.write_str(value)
                } else {
                    quoted(out, value)
                }
            }
            LineFormat::Json => json_string(out, value),
        }
    }

    /// A value that never needs quoting or escaping in either format, written without
    /// `str_field`'s per-byte check: hex digits, an HTTP method (a token: no space, quote,
    /// backslash or control character), a fixed word.
    pub fn plain_field(self, out: &mut impl fmt::Write, name: Key, value: &str) -> fmt::Result {
        debug_assert!(
            !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "not plain: {value:?}"
        );
        name.write(self, out)?;
        match self {
            LineFormat::Text => out.write_str(value),
            LineFormat::Json => {
                out.write_char('"')?;
                out.write_str(value)?;
                out.write_char('"')
            }
        }
    }

    /// A socket address, which never needs quoting or escaping in either format.
    pub fn address_field(
        self,
        out: &mut impl fmt::Write,
        name: Key,
        address: SocketAddr,
    ) -> fmt::Result {
        name.write(self, out)?;
        let quote = matches!(self, LineFormat::Json);
        if quote {
            out.write_char('"')?;
        }
        write_address(out, address)?;
        if quote {
            out.write_char('"')?;
        }
        Ok(())
    }

    /// A value rendered beforehand (see [`Rendered`]).
    pub fn rendered_field(
        self,
        out: &mut impl fmt::Write,
        name: Key,
        value: &Rendered,
    ) -> fmt::Result {
        name.write(self, out)?;
        out.write_str(match self {
            LineFormat::Text => &value.text,
            LineFormat::Json => &value.json,
        })
    }

    pub fn u64_field(
        self,
        out: &mut impl fmt::Write,
        name: impl FieldName,
        value: u64,
    ) -> fmt::Result {
        self.bare_field(out, name, itoa::Buffer::new().format(value))
    }

    pub fn bool_field(
        self,
        out: &mut impl fmt::Write,
        name: impl FieldName,
        value: bool,
    ) -> fmt::Result {
        self.bare_field(out, name, if value { "true" } else { "false" })
    }

    /// A value written as it is in both formats: a number or a boolean.
    fn bare_field(
        self,
        out: &mut impl fmt::Write,
        name: impl FieldName,
        value: &str,
    ) -> fmt::Result {
        name.write(self, out)?;
        out.write_str(value)
    }

    pub fn end(self, out: &mut impl fmt::Write) -> fmt::Result {
        match self {
            LineFormat::Text => out.write_char('\n'),
            LineFormat::Json => out.write_str("}\n"),
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        self.start(&mut writer, meta.level(), meta.target())?;
        let mut fields = Fields {
            format: *self,
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        self.end(&mut writer)
    }
}

/// The level right-aligned in five columns between spaces, as the stock formatter prints it.
fn padded_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    }
}

const TIMESTAMP_LEN: usize = "2026-01-01T00:00:00.000000Z".len();

/// `time` as RFC 3339 UTC with microseconds, written into `buf` with plain arithmetic: every log
/// line needs one, and the formatting machinery costs more than the rest of the line.
fn rfc3339_micros(time: SystemTime, buf: &mut [u8; TIMESTAMP_LEN]) -> &str {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    // Lines come many to a second: the date and time of day are worked out once per second.
    let cached = LAST_SECOND
        .try_with(Cell::get)
        .ok()
        .filter(|(second, _)| *second == seconds);
    match cached {
        Some((_, stamp)) => *buf = stamp,
        None => {
            let (year, month, day) = civil_from_days(seconds / 86_400);
            let second_of_day = seconds % 86_400;
            *buf = *b"0000-00-00T00:00:00.000000Z";
            put_digits(&mut buf[0..4], year);
            put_digits(&mut buf[5..7], month);
            put_digits(&mut buf[8..10], day);
            put_digits(&mut buf[11..13], second_of_day / 3600);
            put_digits(&mut buf[14..16], second_of_day / 60 % 60);
            put_digits(&mut buf[17..19], second_of_day % 60);
            let _ = LAST_SECOND.try_with(|last| last.set((seconds, *buf)));
        }
    }
    put_digits(&mut buf[20..26], u64::from(since_epoch.subsec_micros()));
    // Only ASCII digits and separators were written.
    std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000000Z")
}

thread_local! {
    /// The last second a line was stamped with, and its stamp.
    static LAST_SECOND: Cell<(u64, [u8; TIMESTAMP_LEN])> = const {
        Cell::new((u64::MAX, [0; TIMESTAMP_LEN]))
    };
}

/// Year, month, day of the proleptic Gregorian calendar for days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for dates from 1970 on).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes `value`'s last `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

struct Fields<'a, 'w> {
    format: LineFormat,
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn record(&mut self, write: impl FnOnce(LineFormat, &mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = write(self.format, self.out);
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(|format, out| match format {
            // The text format prints the message bare, after the target.
            LineFormat::Text if field.name() == "message" => {
                out.write_char(' ')?;
                out.write_str(value)
            }
            _ => format.str_field(out, field.name(), value),
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(|format, out| format.u64_field(out, field.name(), value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match self.format {
            LineFormat::Json => {
                self.record(|format, out| {
                    format.bare_field(out, field.name(), itoa::Buffer::new().format(value))
                });
            }
            // As the stock text formatter does, including a bare `message`.
            LineFormat::Text => self.record_debug(field, &value),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(|format, out| format.bool_field(out, field.name(), value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match self.format {
            LineFormat::Json if !value.is_finite() => {
                self.record(|format, out| format.bare_field(out, field.name(), "null"));
            }
            LineFormat::Json => {
                self.record(|format, out| {
                    field.name().write(format, out)?;
                    write!(out, "{value}")
                });
            }
            LineFormat::Text => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(|format, out| match format {
            LineFormat::Text if field.name() == "message" => write!(out, " {value:?}"),
            LineFormat::Text => write!(out, " {}={value:?}", field.name()),
            // Display-ish values (`%x` fields) arrive here; render, then escape.
            LineFormat::Json => format.str_field(out, field.name(), &format!("{value:?}")),
        });
    }
}

fn json_key(out: &mut impl fmt::Write, name: &str) -> fmt::Result {
    out.write_char(',')?;
    json_string(out, name)?;
    out.write_char(':')
}

/// `value` in double quotes as `{:?}` writes it; printable ASCII (the usual case: a rule such as
/// `GET /org/**`) without the formatting machinery.
fn quoted(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return write!(out, "{value:?}");
    }
    out.write_char('"')?;
    let mut plain_from = 0;
    for (i, b) in value.bytes().enumerate() {
        if b == b'"' || b == b'\\' {
            out.write_str(&value[plain_from..i])?;
            out.write_char('\\')?;
            plain_from = i;
        }
    }
    out.write_str(&value[plain_from..])?;
    out.write_char('"')
}

fn json_string(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut plain_from = 0;
    for (i, c) in value.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if u32::from(c) < 0x20 => "",
            _ => continue,
        };
        out.write_str(&value[plain_from..i])?;
        if escape.is_empty() {
            write!(out, "\\u{:04x}", u32::from(c))?;
        } else {
            out.write_str(escape)?;
        }
        plain_from = i + c.len_utf8();
    }
    out.write_str(&value[plain_from..])?;
    out.write_char('"')
}

/// IPv4 by hand: `Display` for addresses goes through `core::fmt`'s padding and width support,
/// which made the peer the costliest field of the audit line. IPv6 peers are rare enough to keep it.
fn write_address(out: &mut impl fmt::Write, address: SocketAddr) -> fmt::Result {
    let SocketAddr::V4(v4) = address else {
        return write!(out, "{address}");
    };
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.write_char('.')?;
        }
        out.write_str(digits.format(octet))?;
    }
    out.write_char(':')?;
    out.write_str(digits.format(v4.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for address in [
            "127.0.0.1:50000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:8080",
            "[::1]:443",
            "[2001:db8::7]:65535",
        ] {
            let address: SocketAddr = address.parse().expect("address");
            let mut written = String::new();
            write_address(&mut written, address).expect("write");
            assert_eq!(written, address.to_string());
        }
    }

    /// One event through a real `tracing` subscriber with `format`; the line after its timestamp.
    fn formatted(format: LineFormat) -> String {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(format)
            .with_writer(move || WriterTo(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                target: "test",
                word = "plain",
                spaced = "two words",
                count = 3u64,
                delta = -2i64,
                ratio = 0.5f64,
                flag = true,
                shown = %"display",
                "something happened"
            );
        });
        let line = String::from_utf8(out.lock().expect("lock").clone()).expect("utf-8");
        match format {
            LineFormat::Text => line.split_once(' ').expect("timestamp").1.to_string(),
            LineFormat::Json => line,
        }
    }

    struct WriterTo(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for WriterTo {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_lines_print_fields_as_key_value_pairs() {
        assert_eq!(
            formatted(LineFormat::Text),
            concat!(
                " WARN test: something happened word=plain spaced=\"two words\" count=3 ",
                "delta=-2 ratio=0.5 flag=true shown=display\n"
            )
        );
    }

    #[test]
    fn json_lines_keep_field_types() {
        let line = formatted(LineFormat::Json);
        assert!(line.ends_with("}\n") && line.lines().count() == 1, "{line}");
        let json: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(json["level"], "WARN");
        assert_eq!(json["target"], "test");
        assert_eq!(json["message"], "something happened");
        assert_eq!(json["spaced"], "two words");
        assert_eq!(json["count"], 3);
        assert_eq!(json["delta"], -2);
        assert_eq!(json["ratio"], 0.5);
        assert_eq!(json["flag"], true);
        assert_eq!(json["shown"], "display");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut Writer::new(&mut out), "a\"b\\c\nd\u{1}e").expect("write");
        assert_eq!(out, r#""a\"b\\c\nd\u0001e""#);
        let parsed: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e");
    }

    #[test]
    fn timestamps_match_rfc3339_with_microseconds() {
        for seconds in [
            0u64,
            951_782_400,
            1_709_164_800,
            1_795_799_702,
            4_102_444_799,
        ] {
            for micros in [0u32, 7, 999_999] {
                let time = UNIX_EPOCH + std::time::Duration::new(seconds, micros * 1000);
                let mut buf = [0u8; TIMESTAMP_LEN];
                assert_eq!(
                    rfc3339_micros(time, &mut buf),
                    humantime::format_rfc3339_micros(time).to_string()
                );
            }
        }
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for value in [0, 7, 10, 99_999, u64::MAX] {
            let mut out = String::new();
            LineFormat::Text
                .u64_field(&mut out, "n", value)
                .expect("write");
            assert_eq!(out, format!(" n={value}"));
        }
    }
}
