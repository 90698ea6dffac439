//! Kubernetes' name and label syntax (`k8s.io/apimachinery/pkg/util/validation`), with its
//! wording, so a user sees the same reason they would get from `kubectl apply`.
//!
//! Each check returns `Err(reason)` rather than a bool so the caller can report it as is.
//! They are written out by hand because each is a few character-class rules and the regex
//! engine would cost more than it saves on the hot path of validating every label.

type Check = Result<(), String>;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;
const QUALIFIED_NAME_MAX: usize = 63;

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// RFC 1123 label: names of Namespaces, containers, ports, volumes.
pub fn is_dns1123_label(s: &str) -> Check {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "{s:?} must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !label_ok(s) {
        return Err(format!(
            "{s:?} is not a valid RFC 1123 label: it must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain: names of most objects.
pub fn is_dns1123_subdomain(s: &str) -> Check {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "{s:?} must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a valid RFC 1123 subdomain: it must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
        ));
    }
    Ok(())
}

/// RFC 1035 label: Service names, which become DNS names and must not start with a digit.
pub fn is_dns1035_label(s: &str) -> Check {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "{s:?} must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    let starts_alpha = s.as_bytes().first().is_some_and(|c| c.is_ascii_lowercase());
    if !starts_alpha || !label_ok(s) {
        return Err(format!(
            "{s:?} is not a valid RFC 1035 label: it must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')"
        ));
    }
    Ok(())
}

fn name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at
/// most 63 characters.
pub fn is_qualified_name(s: &str) -> Check {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(format!("{s:?}: prefix part must be non-empty"));
        }
        if let Err(e) = is_dns1123_subdomain(p) {
            return Err(format!("{s:?}: prefix part {e}"));
        }
    }
    if name.is_empty() {
        return Err(format!("{s:?}: name part must be non-empty"));
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!(
            "{s:?}: name part must be no more than {QUALIFIED_NAME_MAX} characters"
        ));
    }
    if !name_part_ok(name) {
        return Err(format!(
            "{s:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc'), with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ));
    }
    Ok(())
}

/// A label value: empty, or a name part of at most 63 characters.
pub fn is_label_value(s: &str) -> Check {
    if s.len() > LABEL_VALUE_MAX {
        return Err(format!(
            "label value {s:?} must be no more than {LABEL_VALUE_MAX} characters"
        ));
    }
    if !s.is_empty() && !name_part_ok(s) {
        return Err(format!(
            "label value {s:?} must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345')"
        ));
    }
    Ok(())
}

/// An environment variable name: Kubernetes accepts any printable ASCII but `=`.
pub fn is_env_var_name(s: &str) -> Check {
    if s.is_empty() {
        return Err("environment variable name must not be empty".to_string());
    }
    if !s.bytes().all(|c| (b' '..=b'~').contains(&c) && c != b'=') {
        return Err(format!(
            "environment variable name {s:?} must consist of printable ASCII characters other than '='"
        ));
    }
    Ok(())
}

/// A port name (IANA_SVC_NAME): at most 15 characters, lower case letters, digits and `-`,
/// at least one letter, no leading, trailing or double `-`.
pub fn is_port_name(s: &str) -> Check {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("port name {s:?} must be 1 to 15 characters"));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(format!(
            "port name {s:?} must contain only lower case alphanumeric characters (a-z, 0-9) and '-'"
        ));
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        return Err(format!(
            "port name {s:?} must contain at least one letter (a-z)"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err(format!(
            "port name {s:?} must not begin or end with '-' or contain '--'"
        ));
    }
    Ok(())
}

/// A key of ConfigMap or Secret data: a file name, so letters, digits, `-`, `_` and `.`,
/// and not `.` or `..`.
pub fn is_config_map_key(s: &str) -> Check {
    if s.is_empty() || s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "key {s:?} must be 1 to {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
    {
        return Err(format!(
            "key {s:?} must consist of alphanumeric characters, '-', '_' or '.'"
        ));
    }
    if s == "." || s == ".." || s.starts_with("..") {
        return Err(format!(
            "key {s:?} must not be '.' or '..' or start with '..'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("web-1").is_ok());
        assert!(is_dns1123_label("1web").is_ok());
        assert!(is_dns1123_label("Web").is_err());
        assert!(is_dns1123_label("web-").is_err());
        assert!(is_dns1123_label("").is_err());
        assert!(is_dns1123_label(&"a".repeat(64)).is_err());
        assert!(is_dns1123_subdomain("web.example.com").is_ok());
        assert!(is_dns1123_subdomain("web..x").is_err());
        assert!(is_dns1035_label("web").is_ok());
        assert!(is_dns1035_label("1web").is_err());
    }

    #[test]
    fn labels() {
        assert!(is_qualified_name("app.kubernetes.io/name").is_ok());
        assert!(is_qualified_name("App_Name").is_ok());
        assert!(is_qualified_name("/name").is_err());
        assert!(is_qualified_name("Example.com/name").is_err());
        assert!(is_qualified_name("-x").is_err());
        assert!(is_label_value("").is_ok());
        assert!(is_label_value("v1.2_3").is_ok());
        assert!(is_label_value("a b").is_err());
        assert!(is_label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn ports_env_keys() {
        assert!(is_port_name("http").is_ok());
        assert!(is_port_name("http-alt-8080").is_ok());
        assert!(is_port_name("8080").is_err());
        assert!(is_port_name("a--b").is_err());
        assert!(is_port_name("a-very-long-port-name").is_err());
        assert!(is_env_var_name("MY_VAR.1").is_ok());
        assert!(is_env_var_name("A=B").is_err());
        assert!(is_config_map_key("index.html").is_ok());
        assert!(is_config_map_key("..data").is_err());
        assert!(is_config_map_key("a/b").is_err());
    }
}
