//! A table's `scopes_sql`, checked once at startup: its named parameters
//! bound to positions, and the statement prepared so a broken query stops
//! startup with the database's words.

use tokio_postgres::types::Type;

/// The named parameters `scopes_sql` may use, in bind order.
const PARAMS: [&str; 2] = ["user_id", "workspace_id"];

/// Rewrites `:user_id` / `:workspace_id` to `$1` / `$2`, leaving string
/// literals, quoted names and `::` casts alone; any other `:name` is an
/// error.
fn bind_params(sql: &str) -> Result<String, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            // Copy the quoted text through its closing quote ('' and ""
            // escape themselves, so they read as close-then-open).
            out.push(c);
            i += 1;
            while i < chars.len() && chars[i] != c {
                out.push(chars[i]);
                i += 1;
            }
            if i < chars.len() {
                out.push(c);
                i += 1;
            }
            continue;
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push_str("::");
            i += 2;
            continue;
        }
        if c == ':'
            && chars
                .get(i + 1)
                .is_some_and(|n| n.is_alphabetic() || *n == '_')
        {
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
                end += 1;
            }
            let name: String = chars[start..end].iter().collect();
            let Some(n) = PARAMS.iter().position(|p| *p == name) else {
                return Err(format!(
                    "unknown parameter `:{name}`: only :user_id and :workspace_id are available"
                ));
            };
            out.push_str(&format!("${}", n + 1));
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

/// Checks `scopes_sql` by preparing it (a broken query fails with the
/// database's words) and returns the SQL run per call: the bucket ids as
/// text.
pub async fn prepare(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let bound = bind_params(sql)?;
    let text = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
    };
    let stmt = client
        .prepare_typed(&bound, &[Type::TEXT, Type::TEXT])
        .await
        .map_err(text)?;
    if stmt.columns().len() != 1 {
        return Err(format!(
            "the query returns {} columns; it must return one, the bucket id",
            stmt.columns().len()
        ));
    }
    let wrapped = format!(
        "SELECT b.id::text FROM ({}) AS b(id) WHERE b.id IS NOT NULL",
        bound.trim().trim_end_matches(';')
    );
    client
        .prepare_typed(&wrapped, &[Type::TEXT, Type::TEXT])
        .await
        .map_err(text)?;
    Ok(wrapped)
}

#[cfg(test)]
mod tests {
    use super::bind_params;

    #[test]
    fn named_parameters_bind_in_order() {
        assert_eq!(
            bind_params("SELECT t FROM m WHERE u = :user_id AND w = :workspace_id AND x = 'a:b' AND y::text = \":q\"").unwrap(),
            "SELECT t FROM m WHERE u = $1 AND w = $2 AND x = 'a:b' AND y::text = \":q\""
        );
        assert!(bind_params("SELECT :team").unwrap_err().contains(":team"));
    }
}
