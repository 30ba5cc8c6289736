//! DigitalOcean's pagination: `page` and `per_page` (20 by default, at most 200) in, `links`
//! and `meta.total` out.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::error::DoError;
use crate::core;

/// One page of a listing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Page {
    number: usize,
    per_page: usize,
}

impl Page {
    pub(super) fn parse(q: &HashMap<String, String>) -> Result<Self, DoError> {
        let number = core::page_number(q)
            .ok_or_else(|| DoError::unprocessable("page must be a positive integer."))?;
        let per_page = core::per_page(q, 20)
            .filter(|p| *p >= 1)
            .ok_or_else(|| DoError::unprocessable("per_page must be a positive integer."))?
            .min(200);
        Ok(Self { number, per_page })
    }

    /// `{key: <this page of items>, "links": ..., "meta": {"total": ...}}` for the listing at
    /// `base` + `path`; `extra` is the query's filter (`&tag_name=web`), kept in the links.
    pub(super) fn answer(
        self,
        key: &str,
        items: &[Value],
        base: &str,
        path: &str,
        extra: &str,
    ) -> Value {
        let (page, pages) = core::paginate(items, self.number, self.per_page);
        json!({
            key: page,
            "links": self.links(base, path, extra, pages),
            "meta": {"total": items.len()},
        })
    }

    /// DigitalOcean's `links.pages` (absent members on the first / last page; `{}` for one
    /// page).
    fn links(self, base: &str, path: &str, extra: &str, pages: usize) -> Value {
        let (page, per_page) = (self.number, self.per_page);
        let at = |p: usize| format!("{base}{path}?page={p}&per_page={per_page}{extra}");
        let mut m = Map::new();
        if page > 1 {
            m.insert("first".to_owned(), json!(at(1)));
            m.insert("prev".to_owned(), json!(at((page - 1).min(pages))));
        }
        if page < pages {
            m.insert("next".to_owned(), json!(at(page + 1)));
            m.insert("last".to_owned(), json!(at(pages)));
        }
        if m.is_empty() {
            json!({})
        } else {
            json!({"pages": m})
        }
    }
}
