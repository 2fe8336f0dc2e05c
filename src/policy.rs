//! Step 9: is this authenticated identity allowed on this route? Every rule is evaluated
//! here and nowhere else; a "no" becomes a 403, never a 401, since we know who it is.

use std::sync::Arc;

use crate::auth::Authenticated;
use crate::config::RouteConfig;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Every one of these scopes must be granted to a Bearer token.
    require_scopes: Vec<String>,
    /// The same, space-separated, as RFC 6750 `scope` reports it.
    scope_text: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A token without the route's scopes; carries the scopes required.
    MissingScopes(Arc<str>),
}

impl Policy {
    pub fn new(route: &RouteConfig) -> Policy {
        Policy {
            scope_text: (!route.require_scopes.is_empty())
                .then(|| Arc::from(route.require_scopes.join(" "))),
            require_scopes: route.require_scopes.clone(),
        }
    }

    pub fn check(&self, who: &Authenticated) -> Result<(), Denied> {
        if let Some(text) = &self.scope_text {
            let granted = who.scopes();
            if !self.require_scopes.iter().all(|s| granted.contains(s)) {
                return Err(Denied::MissingScopes(text.clone()));
            }
        }
        Ok(())
    }

    /// For `sallyport check`.
    pub fn describe(&self) -> Option<String> {
        self.scope_text
            .as_ref()
            .map(|s| format!("require_scopes: {s}"))
    }
}
