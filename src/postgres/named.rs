//! Named parameters (`:project_id`) in SQL, rewritten to positional ones
//! (`$1`) so every value is sent as a real bind parameter. String literals,
//! quoted identifiers, comments, dollar-quoted bodies and `::` casts are left
//! untouched.

/// SQL with `:name` replaced by `$n`, and the names in `$n` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSql {
    /// The rewritten statement.
    pub sql: String,
    /// `names[i]` is bound to `$(i+1)`.
    pub names: Vec<String>,
}

/// Rewrites `:name` placeholders. Rejects positional `$1` placeholders, which
/// would bypass the named ones.
pub fn rewrite(sql: &str) -> Result<NamedSql, String> {
    rewrite_with(sql, |n, _| format!("${n}"))
}

/// Replaces each `:name` with `replace(n, name)`, `n` being the name's
/// 1-based position in first-use order (repeat uses get the same `n`).
pub fn rewrite_with(
    sql: &str,
    mut replace: impl FnMut(usize, &str) -> String,
) -> Result<NamedSql, String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes =
                    i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e') && (i < 2 || !ident(b[i - 2]));
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $1 is positional; $tag$ or $$ opens a dollar-quoted body.
                let mut j = i + 1;
                if b.get(j).is_some_and(u8::is_ascii_digit) {
                    return Err(format!(
                        "positional parameter at byte {i}; use named parameters such as :project_id"
                    ));
                }
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') && (i == 0 || !ident(b[i - 1])) {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(end) => i = j + 1 + end + tag.len(),
                        None => return Err(format!("unterminated dollar-quoted string {tag}")),
                    }
                } else {
                    i = j;
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => i += 2,
            b':' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') =>
            {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                let name = &sql[start..j];
                let n = match names.iter().position(|x| x == name) {
                    Some(p) => p + 1,
                    None => {
                        names.push(name.to_owned());
                        names.len()
                    }
                };
                out.push_str(&sql[copied..i]);
                out.push_str(&replace(n, name));
                copied = j;
                i = j;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    Ok(NamedSql { sql: out, names })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_positions_and_repeat_uses_reuse_them() {
        let n = rewrite("SELECT * FROM t WHERE a = :a AND (:b::text IS NULL OR b = :b)").unwrap();
        assert_eq!(
            n.sql,
            "SELECT * FROM t WHERE a = $1 AND ($2::text IS NULL OR b = $2)"
        );
        assert_eq!(n.names, vec!["a", "b"]);
    }

    #[test]
    fn literals_comments_and_casts_are_left_alone() {
        let sql =
            "SELECT ':x', \":y\", E'\\':z', $$ :w $$, x::int -- :c\n/* :d */ FROM t WHERE id = :id";
        let n = rewrite(sql).unwrap();
        assert_eq!(n.names, vec!["id"]);
        assert!(n.sql.ends_with("id = $1"));
        assert!(n.sql.contains("':x'") && n.sql.contains("$$ :w $$") && n.sql.contains("x::int"));
    }

    #[test]
    fn positional_parameters_are_rejected() {
        assert!(rewrite("SELECT $1")
            .unwrap_err()
            .contains("named parameters"));
    }
}
