//! Step 9: is this authenticated identity allowed on this route? Every rule is evaluated
//! here and nowhere else; a "no" becomes a 403, never a 401, since we know who it is.
//!
//! Semantics, in order:
//! 1. `methods`: when set, any other method is refused (public routes too);
//! 2. `allow_users`, `allow_groups`, `allow_email_domains` name who may enter: when any
//!    is set, the identity must match at least one entry of at least one of them;
//! 3. `require_scopes` and `require_claims` must all hold.

use std::sync::Arc;

use http::{HeaderMap, Method};
use serde_json::Value;

use crate::auth::Authenticated;
use crate::auth::jwt::scalar_string as scalar;
use crate::config::{RouteConfig, RouteRules};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: RouteRules,
    /// `require_scopes`, space-separated, as RFC 6750 `scope` reports it.
    scope_text: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Method,
    NotAllowed,
    /// A token without the route's scopes; carries the scopes required.
    MissingScopes(Arc<str>),
    Claims,
}

impl Denied {
    /// The log's reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Method => "forbidden_method",
            Denied::NotAllowed => "forbidden_identity",
            Denied::MissingScopes(_) => "insufficient_scope",
            Denied::Claims => "forbidden_claims",
        }
    }
}

/// Headers through which frameworks let a request claim another method.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl Policy {
    pub fn new(route: &RouteConfig) -> Policy {
        Policy {
            scope_text: (!route.rules.require_scopes.is_empty())
                .then(|| Arc::from(route.rules.require_scopes.join(" "))),
            rules: route.rules.clone(),
        }
    }

    /// The rule that applies before anyone is identified.
    /// `headers`: a method named in a method-override header (which Rails, Laravel,
    /// Express's method-override and others obey) must be allowed as well, or a `GET`
    /// carrying `X-HTTP-Method-Override: DELETE` would pass a read-only route.
    pub fn check_method(&self, method: &Method, headers: &HeaderMap) -> Result<(), Denied> {
        let Some(allowed) = &self.rules.methods else {
            return Ok(());
        };
        let overrides = METHOD_OVERRIDES
            .iter()
            .flat_map(|name| headers.get_all(*name).iter())
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|v| Method::from_bytes(v.trim().to_ascii_uppercase().as_bytes()).ok())
            });
        for candidate in std::iter::once(Some(method.clone())).chain(overrides) {
            match candidate {
                Some(m) if allowed.contains(&m) => {}
                _ => return Err(Denied::Method),
            }
        }
        Ok(())
    }

    pub fn check(
        &self,
        who: &Authenticated,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        self.check_method(method, headers)?;
        let r = &self.rules;
        let has_allowlist = !r.allow_users.is_empty()
            || !r.allow_groups.is_empty()
            || !r.allow_email_domains.is_empty();
        if has_allowlist {
            let by_user = r.allow_users.iter().any(|u| u == who.user());
            let by_group = who.groups().iter().any(|g| r.allow_groups.contains(g));
            let by_domain = who
                .email()
                .and_then(email_domain)
                .is_some_and(|d| r.allow_email_domains.contains(&d));
            if !(by_user || by_group || by_domain) {
                return Err(Denied::NotAllowed);
            }
        }
        if let Some(text) = &self.scope_text {
            let granted = who.scopes();
            if !r.require_scopes.iter().all(|s| granted.contains(s)) {
                return Err(Denied::MissingScopes(text.clone()));
            }
        }
        for (path, accepted) in &r.require_claims {
            let value = who.claims().and_then(|c| crate::auth::jwt::claim(c, path));
            let matches = match value {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(scalar)
                    .any(|v| accepted.contains(&v)),
                Some(v) => scalar(v).is_some_and(|v| accepted.contains(&v)),
                None => false,
            };
            if !matches {
                return Err(Denied::Claims);
            }
        }
        Ok(())
    }

    /// For `sallyport check`: the rules in effect, or `None` when there are none.
    pub fn describe(&self) -> Option<String> {
        let r = &self.rules;
        let mut parts = Vec::new();
        if let Some(methods) = &r.methods {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            parts.push(format!("methods {}", names.join(",")));
        }
        let mut who = Vec::new();
        if !r.allow_users.is_empty() {
            who.push(format!("users {}", r.allow_users.join(",")));
        }
        if !r.allow_groups.is_empty() {
            who.push(format!("groups {}", r.allow_groups.join(",")));
        }
        if !r.allow_email_domains.is_empty() {
            who.push(format!("email domains {}", r.allow_email_domains.join(",")));
        }
        if !who.is_empty() {
            parts.push(format!("allow {}", who.join(" or ")));
        }
        if let Some(s) = &self.scope_text {
            parts.push(format!("scopes {s}"));
        }
        for (claim, accepted) in &r.require_claims {
            parts.push(format!("claim {claim} in [{}]", accepted.join(",")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The domain of an address with exactly one `@`, lowercased. `a@b@example.com` has
/// none: parsers disagree about which `@` counts, which is how allowlists get fooled.
fn email_domain(email: &str) -> Option<String> {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_domains_need_exactly_one_at() {
        assert_eq!(
            email_domain("a@Example.COM").as_deref(),
            Some("example.com")
        );
        assert_eq!(email_domain("a@b@example.com"), None);
        assert_eq!(email_domain("@example.com"), None);
        assert_eq!(email_domain("example.com"), None);
        assert_eq!(email_domain("a@"), None);
    }
}
