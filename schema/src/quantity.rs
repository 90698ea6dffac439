//! Resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `1e3`) with Kubernetes' grammar and
//! exact integer arithmetic.
//!
//! A [`Quantity`] keeps the text the user wrote, so a manifest round-trips unchanged and
//! error messages quote it. Numbers are only computed on request ([`Quantity::milli_value`]
//! for CPU, [`Quantity::value`] for bytes), as `mantissa × 10^a × 2^b` in `u128`, rounding up
//! like Kubernetes' `ScaledValue` so that `0.1m` of CPU is 1m, never 0.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A quantity as written in a manifest. Accepts a JSON string or number, as Kubernetes does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Quantity(String);

/// The parsed form: `sign × mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub negative: bool,
    pub mantissa: u128,
    pub exp10: i32,
    pub exp2: u32,
}

/// Exponents beyond this are refused: no resource is 10^100 of anything, and capping keeps
/// every computation in range.
const MAX_EXP10: i32 = 100;

impl Quantity {
    /// Wraps a text without checking it; [`Quantity::parse`] checks.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// A CPU-style quantity of `milli` thousandths (`250m`, or `2` for 2000).
    pub fn from_milli(milli: i64) -> Self {
        if milli % 1000 == 0 {
            Self(format!("{}", milli / 1000))
        } else {
            Self(format!("{milli}m"))
        }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Quantity {
            value: self.0.clone(),
            reason: reason.into(),
        }
    }

    /// Parses with Kubernetes' grammar: `<sign><digits>[.<digits>]<suffix>` where the suffix is
    /// binary (`Ki Mi Gi Ti Pi Ei`), decimal (`n u m "" k M G T P E`) or an exponent (`e3`).
    pub fn parse(&self) -> Result<Parsed> {
        const HINT: &str = "must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (e.g. 100m, 0.5, 128Mi, 1G, 1e3)";
        let s = self.0.as_str();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_len = rest
            .bytes()
            .position(|c| !(c.is_ascii_digit() || c == b'.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_len);
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(self.err(HINT));
        }
        let (exp10, exp2): (i32, u32) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            _ => {
                let exp = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(|| self.err(format!("unknown suffix {suffix:?}; {HINT}")))?;
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(self.err(HINT));
                }
                let e: i32 = exp
                    .parse()
                    .ok()
                    .filter(|e: &i32| e.abs() <= MAX_EXP10)
                    .ok_or_else(|| self.err("exponent is out of range"))?;
                (e, 0)
            }
        };
        // Build the mantissa from all digits, dropping leading zeros and moving trailing
        // zeros into the exponent so long but exact inputs stay in range.
        let mut mantissa: u128 = 0;
        let mut exp10 = exp10;
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| self.err("too many digits"))?;
        exp10 -= frac_len;
        let all = int_part.bytes().chain(frac_part.bytes());
        let total_digits: Vec<u8> = all.map(|c| c - b'0').collect();
        let trimmed_end = total_digits
            .iter()
            .rposition(|&d| d != 0)
            .map_or(0, |p| p + 1);
        let trailing = total_digits.len() - trimmed_end;
        exp10 += i32::try_from(trailing).map_err(|_| self.err("too many digits"))?;
        for &d in &total_digits[..trimmed_end] {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(d)))
                .ok_or_else(|| self.err("too many significant digits"))?;
        }
        if mantissa == 0 {
            exp10 = 0;
        }
        if exp10.abs() > MAX_EXP10 * 2 {
            return Err(self.err("exponent is out of range"));
        }
        Ok(Parsed {
            negative,
            mantissa,
            exp10,
            exp2,
        })
    }

    /// Whether the quantity is below zero (unparseable counts as not negative).
    pub fn is_negative(&self) -> bool {
        self.parse().is_ok_and(|p| p.negative && p.mantissa != 0)
    }

    /// The value in units of `10^scale`, rounded up (away from zero), as Kubernetes'
    /// `ScaledValue` does.
    pub fn scaled_value(&self, scale: i32) -> Result<i64> {
        let p = self.parse()?;
        let too_big = || self.err("is too large");
        let mut v: u128 = p
            .mantissa
            .checked_mul(1u128.checked_shl(p.exp2).ok_or_else(too_big)?)
            .ok_or_else(too_big)?;
        let e = p.exp10 - scale;
        if e >= 0 {
            for _ in 0..e {
                v = v.checked_mul(10).ok_or_else(too_big)?;
            }
        } else {
            let mut div: u128 = 1;
            for _ in 0..(-e) {
                match div.checked_mul(10) {
                    Some(d) => div = d,
                    // The divisor already exceeds any mantissa: the result rounds up to 1.
                    None => {
                        div = u128::MAX;
                        break;
                    }
                }
            }
            v = v.div_ceil(div);
        }
        let v = i64::try_from(v).map_err(|_| too_big())?;
        Ok(if p.negative { -v } else { v })
    }

    /// Thousandths of the unit, rounded up: CPU in millicores.
    pub fn milli_value(&self) -> Result<i64> {
        self.scaled_value(-3)
    }

    /// Whole units, rounded up: memory in bytes.
    pub fn value(&self) -> Result<i64> {
        self.scaled_value(0)
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Quantity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let q = Quantity::new(s);
        q.parse()?;
        Ok(q)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Kubernetes accepts `cpu: 1` as well as `cpu: "1"`; keep the number's own text.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(serde_json::Number),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::S(s) => Quantity(s),
            Raw::N(n) => Quantity(n.to_string()),
        })
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Quantity")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A quantity such as 100m, 0.5, 128Mi, 1G or 1e3 (string or number).",
            "type": ["string", "number"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> i64 {
        Quantity::new(s).milli_value().unwrap()
    }
    fn bytes(s: &str) -> i64 {
        Quantity::new(s).value().unwrap()
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(milli("100m"), 100);
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli("2"), 2000);
        assert_eq!(milli(".25"), 250);
        assert_eq!(milli("1.5k"), 1_500_000);
        // Kubernetes rounds up below the unit rather than losing a request.
        assert_eq!(milli("0.1m"), 1);
        assert_eq!(milli("1n"), 1);
        assert_eq!(milli("0"), 0);
        assert_eq!(milli("-1"), -1000);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(bytes("128Mi"), 128 * 1024 * 1024);
        assert_eq!(bytes("1G"), 1_000_000_000);
        assert_eq!(bytes("1e3"), 1000);
        assert_eq!(bytes("1E3"), 1000);
        assert_eq!(bytes("1.5Gi"), 1_610_612_736);
        assert_eq!(bytes("0.5Ki"), 512);
        assert_eq!(bytes("100"), 100);
        assert_eq!(bytes("1.0001"), 2);
        assert_eq!(bytes("2e-1"), 1);
        assert_eq!(bytes("10000000000000000000000e-22"), 1);
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "", "m", "1mm", "1.2.3", "abc", "1 Gi", "1gi", "1KB", "e3", "1e", "1e+", "1.5x",
            "1e1000",
        ] {
            assert!(
                Quantity::new(bad).parse().is_err(),
                "{bad:?} should be invalid"
            );
        }
        assert!(Quantity::new("1E").parse().is_ok(), "1E is one exa");
        assert!(
            Quantity::new("99999Ei").value().is_err(),
            "overflow is an error"
        );
        assert!(Quantity::new("-1").is_negative());
        assert!(!Quantity::new("-0").is_negative());
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let q: Quantity = serde_json::from_str("0.5").unwrap();
        assert_eq!(q.milli_value().unwrap(), 500);
        let q: Quantity = serde_json::from_str("\"250m\"").unwrap();
        assert_eq!(q.as_str(), "250m");
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"250m\"");
        assert_eq!(Quantity::from_milli(1500).as_str(), "1500m");
        assert_eq!(Quantity::from_milli(2000).as_str(), "2");
    }
}
