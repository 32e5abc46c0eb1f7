//! Who a Kubernetes caller is: from an X.509 client certificate (CN = user,
//! O = groups) or a bearer token in a static token file
//! (`token,user,uid,"group1,group2"`, the kube-apiserver `--token-auth-file` format).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Context, Result};
use crate::wire::der;
use crate::wire::http::Headers;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    #[serde(rename = "x509")]
    ClientCert,
    Token,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::ClientCert => "x509",
            AuthMethod::Token => "token",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub method: AuthMethod,
}

/// The user a verified client certificate names, if its subject has a CN.
pub fn user_from_cert(der_cert: &[u8]) -> Option<UserInfo> {
    let (cn, groups) = der::subject_cn_and_orgs(der_cert)?;
    (!cn.is_empty()).then(|| UserInfo { name: cn, uid: String::new(), groups, method: AuthMethod::ClientCert })
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &Headers) -> Option<&str> {
    let value = headers.get_str("authorization")?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[derive(Default)]
pub struct TokenFile {
    by_token: HashMap<String, UserInfo>,
}

/// Never prints tokens.
impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenFile({} tokens)", self.by_token.len())
    }
}

/// Splits one CSV line, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

impl TokenFile {
    pub fn parse(text: &str) -> Result<TokenFile> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                crate::bail!("line {}: expected token,user,uid[,\"groups\"], found {} fields", i + 1, f.len());
            }
            let groups = f.get(3).map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect()).unwrap_or_default();
            let user = UserInfo { name: f[1].clone(), uid: f[2].clone(), groups, method: AuthMethod::Token };
            if by_token.insert(f[0].clone(), user).is_some() {
                crate::bail!("line {}: duplicate token", i + 1);
            }
        }
        Ok(TokenFile { by_token })
    }

    pub fn load(path: &Path) -> Result<TokenFile> {
        let text = crate::net::file::read_config_text(path)?;
        TokenFile::parse(&text).with_context(|| path.display().to_string())
    }

    pub fn lookup(&self, token: &str) -> Option<&UserInfo> {
        self.by_token.get(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let tf = TokenFile::parse("# comment\nt1,alice,u1,\"sre,ops\"\nt2,bob,u2\n").unwrap();
        let a = tf.lookup("t1").unwrap();
        assert_eq!((a.name.as_str(), a.uid.as_str()), ("alice", "u1"));
        assert_eq!(a.groups, vec!["sre", "ops"]);
        assert!(tf.lookup("t2").unwrap().groups.is_empty());
        assert!(tf.lookup("nope").is_none());
        assert!(TokenFile::parse("t1,alice\n").unwrap_err().to_string().starts_with("line 1:"));
        assert!(TokenFile::parse("t,a,1\nt,b,2\n").is_err());
    }

    #[test]
    fn bearer_parsing() {
        let mut h = Headers::default();
        h.push("Authorization", "Bearer  abc ");
        assert_eq!(bearer_token(&h), Some("abc"));
        h.set("Authorization", "Basic abc");
        assert_eq!(bearer_token(&h), None);
    }
}
