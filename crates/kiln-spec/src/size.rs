//! Sizes as users write them in a spec ("4GiB", "512M", "auto", "25%") and
//! as the build uses them (bytes). Units are binary throughout: disk and
//! partition sizes are sector and MiB aligned, so "4G" meaning 4×10⁹ would only
//! ever produce an odd, unaligned partition.

use std::fmt;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// A partition size: a fixed number of bytes, or "auto" (content plus headroom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Auto,
    Bytes(u64),
}

impl Size {
    /// Parses `"auto"` or anything [`parse_size`] accepts.
    pub fn parse(s: &str) -> Result<Size, String> {
        if s.trim() == "auto" {
            return Ok(Size::Auto);
        }
        parse_size(s).map(Size::Bytes)
    }
}

/// Free space added to the content when a size is "auto".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headroom {
    Bytes(u64),
    /// Percent of the content size.
    Percent(u32),
}

/// Largest headroom percentage accepted; beyond it the value is a typo.
const MAX_HEADROOM_PERCENT: u32 = 1000;

impl Headroom {
    /// Parses a percentage such as `"25%"` or anything [`parse_size`] accepts.
    pub fn parse(s: &str) -> Result<Headroom, String> {
        let t = s.trim();
        if let Some(digits) = t.strip_suffix('%') {
            let digits = digits.trim_end();
            let percent: u32 = match digits.parse() {
                Ok(p) if digits.bytes().all(|b| b.is_ascii_digit()) => p,
                _ => {
                    return Err(format!(
                        "`{s}` is not a percentage; write a whole number such as \"25%\""
                    ))
                }
            };
            if percent > MAX_HEADROOM_PERCENT {
                return Err(format!("{percent}% is more than {MAX_HEADROOM_PERCENT}%"));
            }
            return Ok(Headroom::Percent(percent));
        }
        parse_size(s).map(Headroom::Bytes)
    }

    /// The free space to add to `content` bytes.
    pub fn extra(&self, content: u64) -> u64 {
        match *self {
            Headroom::Bytes(b) => b,
            Headroom::Percent(p) => {
                // u128 because content × percent can exceed u64 for absurd inputs.
                let extra = u128::from(content) * u128::from(p) / 100;
                u64::try_from(extra).unwrap_or(u64::MAX)
            }
        }
    }
}

/// Parses a byte size: a whole number with an optional binary unit, `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB` or `T`/`TiB` (case-insensitive, optional space), or
/// plain bytes (`"1073741824"`, `"512B"`). Decimal units (`MB`, `GB`) are
/// rejected rather than guessed at.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!("`{s}` is not a size"));
    }
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "`{s}` uses a decimal unit; kiln sizes are binary, write `{digits}{}iB`",
                unit[..1].to_ascii_uppercase()
            ))
        }
        _ if unit.starts_with('.') => {
            return Err(format!(
                "`{s}` is not a whole number; use a smaller unit (e.g. \"1536MiB\" for 1.5GiB)"
            ))
        }
        _ => return Err(format!("`{s}` has an unknown unit `{unit}`; use KiB, MiB, GiB or TiB")),
    };
    let number: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A value parsed from a spec string, such as a size, parsed once when the
/// spec is read. It keeps the text as written: that is what serialises (so a
/// spec's canonical JSON, and with it every cache key, is the user's own
/// text) and what error messages quote. A text that does not parse is kept
/// with its reason, so that [`crate::load`] reports it at its position along
/// with every other problem of the file instead of stopping at the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    text: String,
    value: Result<T, String>,
}

/// A spec type that is written as a string.
pub trait FromSpecText: Sized {
    fn from_spec_text(text: &str) -> Result<Self, String>;
}

impl FromSpecText for Size {
    fn from_spec_text(text: &str) -> Result<Self, String> {
        Size::parse(text)
    }
}

impl FromSpecText for Headroom {
    fn from_spec_text(text: &str) -> Result<Self, String> {
        Headroom::parse(text)
    }
}

/// A plain byte size, as [`parse_size`] reads it.
impl FromSpecText for u64 {
    fn from_spec_text(text: &str) -> Result<Self, String> {
        parse_size(text)
    }
}

impl<T: FromSpecText> Written<T> {
    pub fn new(text: impl Into<String>) -> Written<T> {
        let text = text.into();
        let value = T::from_spec_text(&text);
        Written { text, value }
    }
}

impl<T> Written<T> {
    /// The text as the spec has it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed value, or why the text does not parse.
    pub fn parsed(&self) -> Result<&T, &str> {
        self.value.as_ref().map_err(String::as_str)
    }

    /// The parsed value of a spec that [`crate::load`] accepted.
    ///
    /// # Panics
    ///
    /// If the text does not parse: `load` rejects such a spec, so reaching
    /// this with one is a bug in the caller, not a user error.
    pub fn get(&self) -> &T {
        match &self.value {
            Ok(value) => value,
            Err(why) => panic!(
                "kiln_spec::load rejects `{}` ({why}); this spec was not loaded",
                self.text
            ),
        }
    }
}

impl<T: FromSpecText> From<&str> for Written<T> {
    fn from(text: &str) -> Written<T> {
        Written::new(text)
    }
}

impl<T> serde::Serialize for Written<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, T: FromSpecText> serde::Deserialize<'de> for Written<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Written::new)
    }
}

impl<T> schemars::JsonSchema for Written<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }

    fn inline_schema() -> bool {
        true
    }
}

/// Formats bytes for people: the largest binary unit that keeps one decimal
/// place honest ("1 GiB", "1.5 GiB", "300 B").
pub fn format_size(bytes: u64) -> String {
    Bytes(bytes).to_string()
}

struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
        for (unit, name) in UNITS {
            if self.0 >= unit {
                let tenths = (u128::from(self.0) * 10 / u128::from(unit)) as u64;
                return if tenths.is_multiple_of(10) {
                    write!(f, "{} {name}", tenths / 10)
                } else {
                    write!(f, "{}.{} {name}", tenths / 10, tenths % 10)
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("4GiB", Ok(4 * GIB)),
            ("512MiB", Ok(512 * MIB)),
            ("2G", Ok(2 * GIB)),
            ("2g", Ok(2 * GIB)),
            ("1 TiB", Ok(TIB)),
            ("64k", Ok(64 * KIB)),
            ("1073741824", Ok(GIB)),
            ("512B", Ok(512)),
            ("lots", Err("`lots` is not a size")),
            ("", Err("`` is not a size")),
            ("GiB", Err("`GiB` is not a size")),
            ("-1GiB", Err("`-1GiB` is not a size")),
            (
                "4GB",
                Err("`4GB` uses a decimal unit; kiln sizes are binary, write `4GiB`"),
            ),
            (
                "1.5GiB",
                Err("`1.5GiB` is not a whole number; use a smaller unit (e.g. \"1536MiB\" for 1.5GiB)"),
            ),
            (
                "4 PiB",
                Err("`4 PiB` has an unknown unit `PiB`; use KiB, MiB, GiB or TiB"),
            ),
            ("99999999999999999999", Err("`99999999999999999999` is too large")),
            ("99999999999T", Err("`99999999999T` is too large")),
        ];
        for (input, want) in cases {
            let got = parse_size(input);
            assert_eq!(got, want.map_err(str::to_owned), "parse_size({input:?})");
        }
    }

    #[test]
    fn size_and_headroom() {
        assert_eq!(Size::parse("auto"), Ok(Size::Auto));
        assert_eq!(Size::parse("4GiB"), Ok(Size::Bytes(4 * GIB)));
        assert_eq!(Headroom::parse("25%"), Ok(Headroom::Percent(25)));
        assert_eq!(Headroom::parse("512MiB"), Ok(Headroom::Bytes(512 * MIB)));
        assert!(Headroom::parse("2000%").is_err());
        assert!(Headroom::parse("x%").is_err());
        assert!(Headroom::parse("-5%").is_err());
        assert_eq!(Headroom::Percent(25).extra(4 * GIB), GIB);
        assert_eq!(Headroom::Percent(1000).extra(u64::MAX), u64::MAX);
    }

    #[test]
    fn written_keeps_the_text_and_parses_once() {
        let size: Written<Size> = serde_json::from_str("\"4G\"").unwrap();
        assert_eq!(size.get(), &Size::Bytes(4 * GIB));
        assert_eq!(serde_json::to_string(&size).unwrap(), "\"4G\"");
        let bad: Written<u64> = Written::new("4GB");
        assert_eq!(bad.text(), "4GB");
        assert_eq!(
            bad.parsed(),
            Err("`4GB` uses a decimal unit; kiln sizes are binary, write `4GiB`")
        );
    }

    #[test]
    #[should_panic(expected = "kiln_spec::load rejects `lots`")]
    fn an_unloaded_bad_size_is_a_bug_not_a_fallback() {
        Written::<Size>::new("lots").get();
    }

    #[test]
    fn formatting() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (GIB, "1 GiB"),
            (GIB + GIB / 2, "1.5 GiB"),
            (2 * TIB, "2 TiB"),
            (300 * MIB, "300 MiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(format_size(bytes), want);
        }
    }
}
