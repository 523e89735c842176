//! Log line formats, text and JSON, written straight into the line buffer.
//!
//! Every request logs an audit event with a dozen fields; `tracing_subscriber`'s stock formatters
//! spend several microseconds on styling and padding for each. These write the same information
//! (timestamp, level, target, fields) with plain appends: `key=value` pairs, or one JSON object
//! per line with the fields flattened.

use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    Text,
    Json,
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
        let now = humantime::format_rfc3339_micros(SystemTime::now());
        match self {
            LineFormat::Text => {
                write!(writer, "{now} {:>5} {}:", meta.level(), meta.target())?;
                let mut fields = TextFields {
                    out: &mut writer,
                    result: Ok(()),
                };
                event.record(&mut fields);
                fields.result?;
            }
            LineFormat::Json => {
                write!(
                    writer,
                    "{{\"timestamp\":\"{now}\",\"level\":\"{}\",\"target\":",
                    meta.level()
                )?;
                json_string(&mut writer, meta.target())?;
                let mut fields = JsonFields {
                    out: &mut writer,
                    result: Ok(()),
                };
                event.record(&mut fields);
                fields.result?;
                writer.write_char('}')?;
            }
        }
        writer.write_char('\n')
    }
}

struct TextFields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Visit for TextFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            write!(self.out, " {value}")
        } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
            write!(self.out, " {}={value}", field.name())
        } else {
            write!(self.out, " {}={value:?}", field.name())
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            write!(self.out, " {value:?}")
        } else {
            write!(self.out, " {}={value:?}", field.name())
        };
    }
}

struct JsonFields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.out.write_char(',')?;
        json_string(self.out, field.name())?;
        self.out.write_char(':')
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| json_string(self.out, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| write!(self.out, "{value}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                if value.is_finite() {
                    write!(self.out, "{value}")
                } else {
                    self.out.write_str("null")
                }
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            // Display-ish values (`%x` fields) arrive here; render, then escape.
            let text = format!("{value:?}");
            self.result = self.key(field).and_then(|()| json_string(self.out, &text));
        }
    }
}

fn json_string(out: &mut Writer<'_>, value: &str) -> fmt::Result {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut Writer::new(&mut out), "a\"b\\c\nd\u{1}e").expect("write");
        assert_eq!(out, r#""a\"b\\c\nd\u0001e""#);
        let parsed: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed, "a\"b\\c\nd\u{1}e");
    }
}
