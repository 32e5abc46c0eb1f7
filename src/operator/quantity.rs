//! Kubernetes quantities (`500m`, `1Gi`, `1.5e3`) as values, so a size or a resource
//! the user wrote as `1024Mi` is the same as the `1Gi` the API server stores it as:
//! compared as text, every pass would see a change and roll the replicas.

/// Values are in nano-units (10^-9), the finest a quantity keeps.
const NANO_DIGITS: i32 = 9;

/// The value of `q` in nano-units (rounded up, as the API server rounds), or `None`
/// when it is not a quantity or too large to hold.
pub fn parse(q: &str) -> Option<i128> {
    let (negative, rest) = match q.as_bytes().first()? {
        b'-' => (true, &q[1..]),
        b'+' => (false, &q[1..]),
        _ => (false, q),
    };
    let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // value = digits / 10^fraction_len * 2^binary * 10^decimal, in nano-units.
    let (binary, decimal): (u32, i32) = match suffix {
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp => {
            let digits = exp.strip_prefix(['e', 'E'])?;
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (0, digits.parse().ok()?)
        }
    };
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = decimal.checked_add(NANO_DIGITS)?.checked_sub(i32::try_from(fraction.len()).ok()?)?;
    let value = digits.checked_mul(1i128.checked_shl(binary)?)?;
    let value = if scale >= 0 {
        value.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        // Rounded up: a request never shrinks by being written finer than a nano-unit.
        match 10i128.checked_pow(scale.unsigned_abs()) {
            Some(div) => value / div + i128::from(value % div != 0),
            None => i128::from(value != 0),
        }
    };
    Some(if negative { -value } else { value })
}

/// Whether two quantities are the same amount (`1024Mi` and `1Gi`).
pub fn same(a: &str, b: &str) -> bool {
    a == b || parse(a).zip(parse(b)).is_some_and(|(a, b)| a == b)
}

/// Whether `q` is a positive quantity.
pub fn positive(q: &str) -> bool {
    parse(q).is_some_and(|v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spellings_the_api_server_stores_differently_are_the_same_amount() {
        for (a, b) in [("1024Mi", "1Gi"), ("1000m", "1"), ("0.5", "500m"), ("1e3", "1k"), ("1.5Gi", "1536Mi"), ("2000M", "2G"), ("+1", "1"), ("1E", "1e18")] {
            assert!(same(a, b), "{a} = {b}");
        }
        for (a, b) in [("1Gi", "1G"), ("100m", "10m"), ("1Ki", "1k")] {
            assert!(!same(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn what_is_not_a_quantity_is_refused() {
        for q in ["", "Gi", "ten", "1.2.3", "1 Gi", "1gi", "1e", "1e+", "-", ".", "1e999", "1e40", "99999999999999999999999999999999999Ei"] {
            assert_eq!(parse(q), None, "{q:?}");
        }
        assert_eq!(parse(".5"), Some(500_000_000));
        assert_eq!(parse("1n"), Some(1));
        assert_eq!(parse("0.1n"), Some(1), "rounded up, as the API server does");
        assert_eq!(parse("1e-2147483000"), Some(1));
        assert!(positive("10Gi") && !positive("0") && !positive("-1"));
    }
}
