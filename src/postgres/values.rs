//! Postgres values to and from engine values, in the binary protocol.
//!
//! Reading accepts any column and decodes the common types exactly (numeric
//! as decimal text, timestamps to the microsecond, json as its stored text);
//! an unsupported type gets an error telling the author to cast it.
//! Binding adapts each parameter to the type Postgres inferred for its
//! placeholder, so `:id` works against int4, int8, uuid or text columns.

use std::error::Error;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use postgres_types::{FromSql, IsNull, Kind, ToSql, Type};

use crate::engine::params::parse_uuid;
use crate::engine::Value;

type BoxError = Box<dyn Error + Sync + Send>;

/// Microseconds from the Unix epoch to the Postgres epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to the Postgres epoch.
const PG_EPOCH_DAYS: i64 = 10_957;

/// A column value read as an engine [`Value`].
#[derive(Debug)]
pub struct SqlValue(pub Value);

impl<'a> FromSql<'a> for SqlValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => Value::Float(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Float(f64::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::String(std::str::from_utf8(raw)?.to_owned())
            }
            Type::NUMERIC => Value::Numeric(numeric_text(raw)?),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let t = i64::from_sql(&Type::INT8, raw)?;
                // ±infinity are sentinels; keep them at the extremes.
                Value::Timestamp(if t == i64::MAX || t == i64::MIN { t } else { t + PG_EPOCH_MICROS })
            }
            Type::DATE => Value::Date(date_text(i32::from_sql(&Type::INT4, raw)?)),
            Type::JSON => Value::Json(std::str::from_utf8(raw)?.to_owned()),
            Type::JSONB => match raw.split_first() {
                Some((1, body)) => Value::Json(std::str::from_utf8(body)?.to_owned()),
                _ => return Err("unsupported jsonb format version".into()),
            },
            Type::BYTEA => Value::Bytes(raw.to_vec()),
            Type::UUID => Value::Uuid(uuid_text(raw)?),
            _ if matches!(ty.kind(), Kind::Enum(_)) => Value::String(std::str::from_utf8(raw)?.to_owned()),
            _ => {
                return Err(format!(
                    "columns of type {} are not supported; cast the column in the query, for example `col::text` or `to_jsonb(col)`",
                    ty.name()
                )
                .into())
            }
        };
        Ok(SqlValue(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(SqlValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The [`Value`] kind a column of type `ty` is read as, or why it cannot be.
pub fn kind_of(ty: &Type) -> Result<&'static str, String> {
    Ok(match *ty {
        Type::BOOL => "bool",
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => "int",
        Type::FLOAT4 | Type::FLOAT8 => "float",
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => "string",
        Type::NUMERIC => "numeric",
        Type::TIMESTAMP | Type::TIMESTAMPTZ => "timestamp",
        Type::DATE => "date",
        Type::JSON | Type::JSONB => "json",
        Type::BYTEA => "bytes",
        Type::UUID => "uuid",
        _ if matches!(ty.kind(), Kind::Enum(_)) => "string",
        _ => {
            return Err(format!(
                "type {} is not supported; cast the column in the query, for example `col::text` or `to_jsonb(col)`",
                ty.name()
            ))
        }
    })
}

fn uuid_text(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("bad uuid length".into());
    }
    let mut s = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    Ok(s)
}

/// Decodes the binary numeric format (base-10000 digits) into exact text.
fn numeric_text(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i..i + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<u16>, _>>()?;
    let digit = |i: i64| {
        if i < 0 {
            0
        } else {
            digits.get(i as usize).copied().unwrap_or(0)
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(s, "{}", digit(i));
            } else {
                let _ = write!(s, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

/// Days since 2000-01-01 to `YYYY-MM-DD` (proleptic Gregorian).
fn date_text(pg_days: i32) -> String {
    if pg_days == i32::MAX {
        return "infinity".into();
    }
    if pg_days == i32::MIN {
        return "-infinity".into();
    }
    let z = pg_days as i64 + PG_EPOCH_DAYS + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes decimal text (`-12.50`, `1e-3`, `NaN`, `Infinity`) in the binary
/// numeric format: base-10000 digits aligned on the decimal point, keeping
/// the text's scale (`1.50` stays `1.50`).
fn put_numeric(text: &str, out: &mut BytesMut) -> Result<(), String> {
    let bad = || format!("{text:?} is not a decimal number");
    let t = text.trim();
    let special = match t.to_ascii_lowercase().as_str() {
        "nan" => Some(0xC000u16),
        "infinity" | "+infinity" => Some(0xD000),
        "-infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        for w in [0u16, 0, sign, 0] {
            out.put_u16(w);
        }
        return Ok(());
    }
    let (negative, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().map_err(|_| bad())?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || exp.unsigned_abs() > 1 << 20
    {
        return Err(bad());
    }
    let digits: Vec<u16> = int
        .bytes()
        .chain(frac.bytes())
        .map(|b| u16::from(b - b'0'))
        .collect();
    // How many of the digits stand before the decimal point.
    let point = int.len() as i64 + exp;
    let dscale = (digits.len() as i64 - point).max(0);
    // Digit i stands for 10^(point - 1 - i); base-10000 digit g holds the
    // powers 4g .. 4g + 3.
    let top = (point - 1).div_euclid(4);
    let bottom = (point - digits.len() as i64).div_euclid(4);
    let mut groups = vec![0u16; (top - bottom + 1) as usize];
    for (i, d) in digits.iter().enumerate() {
        let p = point - 1 - i as i64;
        groups[(top - p.div_euclid(4)) as usize] += d * 10u16.pow(p.rem_euclid(4) as u32);
    }
    let lead = groups.iter().take_while(|&&g| g == 0).count();
    let trail = groups[lead..].iter().rev().take_while(|&&g| g == 0).count();
    let kept = &groups[lead..groups.len() - trail];
    let weight = if kept.is_empty() {
        0
    } else {
        top - lead as i64
    };
    // PostgreSQL's limits: a 14-bit display scale and a 16-bit weight.
    if dscale > 0x3FFF || i16::try_from(weight).is_err() {
        return Err(format!("{text:?} is outside the range of numeric"));
    }
    out.put_u16(kept.len() as u16);
    out.put_i16(weight as i16);
    out.put_u16(if negative && !kept.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(dscale as u16);
    for g in kept {
        out.put_u16(*g);
    }
    Ok(())
}

/// `YYYY-MM-DD` (a leading `-` or a ` BC` suffix for years before 1 AD, as
/// [`date_text`] and PostgreSQL write them) or `±infinity` to days since
/// 2000-01-01.
fn pg_date(text: &str) -> Result<i32, String> {
    let bad = || format!("{text:?} is not a date like 1999-12-31");
    let t = text.trim();
    match t {
        "infinity" | "+infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (t, bc) = match t.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (t, false),
    };
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let mut parts = t.splitn(3, '-');
    let mut num = |max_len: usize| -> Result<i64, String> {
        let p = parts.next().filter(|p| {
            !p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit())
        });
        p.and_then(|p| p.parse().ok()).ok_or_else(bad)
    };
    let (mut y, m, d) = (num(7)?, num(2)?, num(2)?);
    if negative {
        y = -y;
    }
    if bc {
        y = 1 - y;
    }
    let leap = y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0);
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] {
        return Err(bad());
    }
    // Days from civil (proleptic Gregorian), the inverse of `date_text`.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let unix_days = era * 146_097 + doe - 719_468;
    i32::try_from(unix_days - PG_EPOCH_DAYS)
        .ok()
        .filter(|&v| v != i32::MAX && v != i32::MIN)
        .ok_or_else(|| format!("{text:?} is outside PostgreSQL's date range"))
}

/// A parameter bound to whatever type Postgres inferred for its placeholder.
#[derive(Debug)]
pub struct SqlParam<'a>(pub &'a Value);

/// A value the caller gave that cannot be bound to its placeholder (out of
/// range, wrong kind): the caller's input is at fault, not the server.
#[derive(Debug)]
pub struct BindError(pub String);

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BindError {}

/// The earliest timestamp PostgreSQL stores (4714-11-24 BC), in
/// microseconds from its 2000-01-01 epoch.
const PG_MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// The first timestamp past PostgreSQL's range (294277-01-01).
const PG_END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

/// Microseconds since 1970 as PostgreSQL's microseconds since 2000, or an
/// error when PostgreSQL cannot store the time. `i64::MAX`/`MIN` stand for
/// `infinity`/`-infinity`, as when reading.
fn pg_timestamp(unix_micros: i64) -> Result<i64, BindError> {
    if unix_micros == i64::MAX || unix_micros == i64::MIN {
        return Ok(unix_micros);
    }
    Some(unix_micros)
        .filter(|&t| t != crate::engine::value::TIMESTAMP_OUT_OF_RANGE)
        .and_then(|t| t.checked_sub(PG_EPOCH_MICROS))
        .filter(|t| (PG_MIN_TIMESTAMP..PG_END_TIMESTAMP).contains(t))
        .ok_or_else(|| {
            BindError("timestamp is outside PostgreSQL's range (4713 BC to 294276 AD)".to_owned())
        })
}

fn mismatch(v: &Value, ty: &Type) -> BoxError {
    format!(
        "cannot pass a {} where the query expects {}; add a cast such as `:param::{}` in the SQL",
        v.kind(),
        ty.name(),
        match v {
            Value::Int(_) => "int8",
            Value::Float(_) => "float8",
            Value::Bool(_) => "bool",
            Value::Timestamp(_) => "timestamptz",
            _ => "text",
        }
    )
    .into()
}

impl ToSql for SqlParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        // Every failure here is about the caller's value.
        self.encode(ty, out)
            .map_err(|e| Box::new(BindError(e.to_string())) as BoxError)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

impl SqlParam<'_> {
    fn encode(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = self.0;
        match (v, ty) {
            (Value::Null, _) => return Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => out.put_i64(*i),
            (Value::Int(i), &Type::INT4) => {
                out.put_i32(i32::try_from(*i).map_err(|_| format!("{i} does not fit in int4"))?)
            }
            (Value::Int(i), &Type::INT2) => {
                out.put_i16(i16::try_from(*i).map_err(|_| format!("{i} does not fit in int2"))?)
            }
            (Value::Int(i), &Type::FLOAT8) => out.put_f64(*i as f64),
            (Value::Int(i), &Type::FLOAT4) => out.put_f32(*i as f32),
            (Value::Float(f), &Type::FLOAT8) => out.put_f64(*f),
            (Value::Float(f), &Type::FLOAT4) => out.put_f32(*f as f32),
            (Value::Bool(b), &Type::BOOL) => out.put_u8(u8::from(*b)),
            (Value::Timestamp(t), &Type::TIMESTAMPTZ | &Type::TIMESTAMP) => {
                out.put_i64(pg_timestamp(*t)?)
            }
            (Value::String(s) | Value::Uuid(s), &Type::UUID) => {
                let canon = parse_uuid(s).ok_or_else(|| format!("{s:?} is not a UUID"))?;
                let hex: String = canon.chars().filter(|c| *c != '-').collect();
                for i in 0..16 {
                    out.put_u8(u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?);
                }
            }
            (Value::String(s), &Type::INT8 | &Type::INT4 | &Type::INT2) => {
                let i: i64 = s.parse().map_err(|_| format!("{s:?} is not an integer"))?;
                return SqlParam(&Value::Int(i)).encode(ty, out);
            }
            (
                Value::String(s) | Value::Uuid(s) | Value::Numeric(s) | Value::Date(s),
                &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN,
            ) => out.put_slice(s.as_bytes()),
            (Value::Int(i), &Type::TEXT | &Type::VARCHAR) => {
                out.put_slice(i.to_string().as_bytes())
            }
            (Value::Json(s) | Value::String(s), &Type::JSON) => out.put_slice(s.as_bytes()),
            (Value::Json(s) | Value::String(s), &Type::JSONB) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            (Value::Bytes(b), &Type::BYTEA) => out.put_slice(b),
            (Value::Numeric(s) | Value::String(s), &Type::NUMERIC) => put_numeric(s, out)?,
            (Value::Int(i), &Type::NUMERIC) => put_numeric(&i.to_string(), out)?,
            (Value::Date(s) | Value::String(s), &Type::DATE) => out.put_i32(pg_date(s)?),
            (Value::String(s), _) if matches!(ty.kind(), Kind::Enum(_)) => {
                out.put_slice(s.as_bytes())
            }
            _ => return Err(mismatch(v, ty)),
        }
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn values_out_of_range_are_refused_not_wrapped() {
        let mut out = BytesMut::new();
        let big = Value::Int(2_147_483_648);
        let e = SqlParam(&big).to_sql(&Type::INT4, &mut out).err().unwrap();
        assert!(e.downcast_ref::<BindError>().is_some(), "{e}");
        assert!(e.to_string().contains("int4"), "{e}");
        for t in [i64::MIN + 1, PG_MIN_TIMESTAMP + PG_EPOCH_MICROS - 1] {
            let e = SqlParam(&Value::Timestamp(t))
                .to_sql(&Type::TIMESTAMPTZ, &mut out)
                .err()
                .unwrap();
            assert!(e.to_string().contains("range"), "{e}");
        }
        assert!(SqlParam(&Value::Timestamp(0))
            .to_sql(&Type::TIMESTAMPTZ, &mut out)
            .is_ok());
        assert!(SqlParam(&Value::Timestamp(i64::MAX))
            .to_sql(&Type::TIMESTAMPTZ, &mut out)
            .is_ok());
    }

    #[test]
    fn numerics_decode_exactly() {
        // 12345678.90 = [1234, 5678, 9000], weight 1, dscale 2
        assert_eq!(
            numeric_text(&numeric(3, 1, 0, 2, &[1234, 5678, 9000])).unwrap(),
            "12345678.90"
        );
        // -0.0012 = [12], weight -1, dscale 4
        assert_eq!(
            numeric_text(&numeric(1, -1, 0x4000, 4, &[12])).unwrap(),
            "-0.0012"
        );
        // 10000 = [1], weight 1, dscale 0
        assert_eq!(numeric_text(&numeric(1, 1, 0, 0, &[1])).unwrap(), "10000");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
    }

    #[test]
    fn numerics_encode_to_what_decodes_back() {
        let enc = |s: &str| {
            let mut out = BytesMut::new();
            put_numeric(s, &mut out).map(|()| numeric_text(&out).unwrap())
        };
        for s in [
            "0",
            "0.00",
            "1",
            "-1",
            "10000",
            "123456789012.34",
            "-0.000000000000000000001",
            "1.50",
            "99999999.9999",
            "0.0001",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(enc(s).unwrap(), s);
        }
        assert_eq!(enc("+.5").unwrap(), "0.5");
        assert_eq!(enc("1e5").unwrap(), "100000");
        assert_eq!(enc("12.5E-3").unwrap(), "0.0125");
        assert_eq!(enc("-0").unwrap(), "0");
        for bad in [
            "",
            ".",
            "1.2.3",
            "12x",
            "1e",
            "--1",
            "1e999999999",
            "1e-20000",
        ] {
            assert!(enc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_encode_to_what_decodes_back() {
        for days in [0, -1, 59, -10957, 1_000_000, -2_451_545, 2_147_483_000] {
            assert_eq!(pg_date(&date_text(days)).unwrap(), days, "{days}");
        }
        assert_eq!(pg_date("infinity").unwrap(), i32::MAX);
        assert_eq!(pg_date("-infinity").unwrap(), i32::MIN);
        assert_eq!(
            pg_date("0044-03-15 BC").unwrap(),
            pg_date("-043-03-15").unwrap()
        );
        for bad in [
            "",
            "1999-13-01",
            "1999-02-29",
            "2000-02-30",
            "1999-1",
            "99-x-01",
            "1999-12-31T00",
        ] {
            assert!(pg_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_decode_across_eras() {
        assert_eq!(date_text(0), "2000-01-01");
        assert_eq!(date_text(-1), "1999-12-31");
        assert_eq!(date_text(59), "2000-02-29");
        assert_eq!(date_text(-10957), "1970-01-01");
    }
}
