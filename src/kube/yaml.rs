//! The block subset of YAML that kubeconfig files use (kubectl, kind and kubeadm
//! write it), read into JSON values: mappings, sequences (including `- key: v` items
//! and sequences at their key's indentation), plain, single- and double-quoted
//! scalars, comments, `{}` and `[]`. Anchors, tags, multi-line scalars and flow
//! collections with content are refused with the line number, never misread.
//! JSON is YAML too: a document starting with `{` is parsed as JSON.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

fn err(line: usize, what: &str) -> Error {
    Error::new(format!("line {line}: {what}"))
}

/// Strips a comment that starts outside quotes.
fn strip_comment(s: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1] == b' ') => return s[..i].trim_end(),
            _ => {}
        }
    }
    s.trim_end()
}

pub fn parse(text: &str) -> Result<Value> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| Error::new(format!("JSON: {e}")));
    }
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.contains('\t') && raw.trim_start().starts_with('\t') {
            return Err(err(i + 1, "tabs cannot indent YAML"));
        }
        let content = strip_comment(raw);
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed == "---" {
            continue;
        }
        lines.push(Line { number: i + 1, indent: content.len() - trimmed.len(), text: trimmed });
    }
    if lines.is_empty() {
        return Ok(Value::Null);
    }
    let mut at = 0;
    let indent = lines[0].indent;
    let value = block(&mut lines, &mut at, indent)?;
    if at < lines.len() {
        return Err(err(lines[at].number, "unexpected indentation"));
    }
    Ok(value)
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

fn block(lines: &mut Vec<Line<'_>>, at: &mut usize, indent: usize) -> Result<Value> {
    if is_seq_item(lines[*at].text) {
        sequence(lines, at, indent)
    } else {
        mapping(lines, at, indent)
    }
}

fn sequence(lines: &mut Vec<Line<'_>>, at: &mut usize, indent: usize) -> Result<Value> {
    let mut items = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent && is_seq_item(lines[*at].text) {
        let item = lines[*at].text[1..].trim_start();
        if item.is_empty() {
            *at += 1;
            match lines.get(*at) {
                Some(next) if next.indent > indent => {
                    let i = next.indent;
                    items.push(block(lines, at, i)?);
                }
                _ => items.push(Value::Null),
            }
        } else if split_key(item).is_some() || is_seq_item(item) {
            // `- key: value` opens a mapping whose keys align with `key`.
            let column = indent + (lines[*at].text.len() - item.len());
            lines[*at].indent = column;
            lines[*at].text = item;
            items.push(block(lines, at, column)?);
        } else {
            items.push(scalar(item, lines[*at].number)?);
            *at += 1;
        }
    }
    Ok(Value::Array(items))
}

/// Splits `key: value` (or `key:`) outside quotes.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let (mut single, mut double) = (false, false);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b':' if !single && !double && (i + 1 == bytes.len() || bytes[i + 1] == b' ') => {
                return Some((&text[..i], text[i + 1..].trim()));
            }
            _ => {}
        }
    }
    None
}

fn mapping(lines: &mut Vec<Line<'_>>, at: &mut usize, indent: usize) -> Result<Value> {
    let mut map = Map::new();
    while *at < lines.len() && lines[*at].indent == indent && !is_seq_item(lines[*at].text) {
        let number = lines[*at].number;
        let (key, rest) = split_key(lines[*at].text).ok_or_else(|| err(number, "expected `key: value`"))?;
        let key = match scalar(key, number)? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        *at += 1;
        let value = if !rest.is_empty() {
            scalar(rest, number)?
        } else {
            match lines.get(*at) {
                Some(next) if next.indent > indent => {
                    let i = next.indent;
                    block(lines, at, i)?
                }
                Some(next) if next.indent == indent && is_seq_item(next.text) => sequence(lines, at, indent)?,
                _ => Value::Null,
            }
        };
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

fn scalar(text: &str, line: usize) -> Result<Value> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or_else(|| err(line, "unterminated single quote"))?;
        return Ok(Value::String(inner.replace("''", "'")));
    }
    if text.starts_with('"') {
        return serde_json::from_str(text).map_err(|_| err(line, "bad double-quoted string"));
    }
    match text {
        "{}" => return Ok(Value::Object(Map::new())),
        "[]" => return Ok(Value::Array(Vec::new())),
        "true" | "True" => return Ok(Value::Bool(true)),
        "false" | "False" => return Ok(Value::Bool(false)),
        "null" | "~" => return Ok(Value::Null),
        _ => {}
    }
    if text.starts_with(['{', '[', '&', '*', '!', '|', '>']) {
        return Err(err(line, "flow collections, anchors, tags and block scalars are not supported"));
    }
    Ok(Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kind_style_kubeconfig() {
        let text = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://127.0.0.1:6443 # local\n  name: kind-kind\ncontexts:\n- context:\n    cluster: kind-kind\n    user: kind-kind\n  name: kind-kind\ncurrent-context: kind-kind\nkind: Config\npreferences: {}\nusers:\n- name: \"kind-kind\"\n  user:\n    token: 'a''b'\n    insecure-skip-tls-verify: true\n";
        let v = parse(text).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"], json!("https://127.0.0.1:6443"));
        assert_eq!(v["clusters"][0]["name"], json!("kind-kind"));
        assert_eq!(v["contexts"][0]["context"]["user"], json!("kind-kind"));
        assert_eq!(v["users"][0]["user"]["token"], json!("a'b"));
        assert_eq!(v["users"][0]["user"]["insecure-skip-tls-verify"], json!(true));
        assert_eq!(v["preferences"], json!({}));
    }

    #[test]
    fn sequences_at_key_indentation_and_json() {
        let v = parse("users:\n- name: a\n- name: b\n").unwrap();
        assert_eq!(v, json!({"users": [{"name": "a"}, {"name": "b"}]}));
        assert_eq!(parse("{\"a\": 1}").unwrap(), json!({"a": 1}));
    }

    #[test]
    fn unsupported_constructs_name_their_line() {
        let e = parse("a: b\nc: &anchor x\n").unwrap_err().to_string();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse("a: b\n  c: d\n").is_err());
    }
}
