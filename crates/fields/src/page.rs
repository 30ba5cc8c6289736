//! Keyset paging with one opaque token format for every list RPC.
//!
//! A token is the position after the last item of a page (the values of the list's sort
//! columns), base64url-encoded. It carries no authority: the query still applies every filter
//! of the request, so a token from another list or another caller reveals nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orchestrator_status::{At as _, Violation};

use crate::ids::Invalid;

/// The page size when a request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// The largest page any list returns; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Tokens longer than this were not issued by us.
const MAX_TOKEN_LEN: usize = 2048;

const NOT_OURS: Invalid = Invalid("not a page token this service issued");

/// One page of a list request: its size and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    size: usize,
    after: Option<Vec<String>>,
}

impl Page {
    /// Parses `page_size` (0 = [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`]) and
    /// `page_token` (empty = the first page), whose position must have `arity` values (the
    /// list's sort columns).
    pub fn parse(page_size: i32, page_token: &str, arity: usize) -> Result<Self, Violation> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(Invalid("must not be negative")).at("page_size"),
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(page_token, arity).at("page_token")?)
        };
        Ok(Self { size, after })
    }

    /// The first page of `size` items (for a service's own paged reads).
    pub fn first(size: usize) -> Self {
        Self {
            size: size.clamp(1, MAX_PAGE_SIZE),
            after: None,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The query's `LIMIT`: one more than the page, to learn whether another page follows.
    pub fn limit(&self) -> i64 {
        self.size as i64 + 1
    }

    /// The position the page starts after, `None` for the first page.
    pub fn after(&self) -> Option<&[String]> {
        self.after.as_deref()
    }

    /// Keeps the page's items of `rows` (fetched with [`Page::limit`]) and returns the next
    /// page's token, empty when this was the last page. `position` gives an item's sort values.
    pub fn finish<T>(&self, rows: &mut Vec<T>, position: impl Fn(&T) -> Vec<String>) -> String {
        if rows.len() <= self.size {
            return String::new();
        }
        rows.truncate(self.size);
        rows.last()
            .map(|last| encode(&position(last)))
            .unwrap_or_default()
    }
}

fn encode(position: &[String]) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).unwrap_or_default())
}

fn decode(token: &str, arity: usize) -> Result<Vec<String>, Invalid> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(NOT_OURS);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| NOT_OURS)?;
    let position: Vec<String> = serde_json::from_slice(&bytes).map_err(|_| NOT_OURS)?;
    if position.len() != arity {
        return Err(NOT_OURS);
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(Page::parse(0, "", 1).unwrap().size(), DEFAULT_PAGE_SIZE);
        assert_eq!(Page::parse(5, "", 1).unwrap().size(), 5);
        assert_eq!(Page::parse(i32::MAX, "", 1).unwrap().size(), MAX_PAGE_SIZE);
        assert_eq!(Page::parse(-1, "", 1).unwrap_err().field, "page_size");
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let page = Page::parse(2, "", 2).unwrap();
        let mut rows = vec![("a", 1), ("b", 2), ("c", 3)];
        let token = page.finish(&mut rows, |(k, n)| vec![(*k).to_owned(), n.to_string()]);
        assert_eq!(rows.len(), 2);
        let next = Page::parse(2, &token, 2).unwrap();
        assert_eq!(next.after().unwrap(), ["b", "2"]);
        let mut last = vec![("c", 3)];
        assert_eq!(next.finish(&mut last, |_| vec![]), "");
        for bad in ["!", "bm90IGpzb24", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert_eq!(Page::parse(1, bad, 2).unwrap_err().field, "page_token");
        }
        // A token of another list (another arity) is not ours either.
        assert!(Page::parse(1, &token, 1).is_err());
    }
}
