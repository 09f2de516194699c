use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use domain::{Scope, User, UserFilter, UserId, synthetic};
use futures::stream::{self, StreamExt};
use ports::{PortError, UserRepository, UserStream};

type Table = HashMap<Scope, BTreeMap<UserId, User>>;

/// Users held in memory, per scope, ordered by id.
#[derive(Debug, Clone, Default)]
pub struct MemoryUserRepository {
    table: Arc<RwLock<Table>>,
    page_size: usize,
}

impl MemoryUserRepository {
    pub fn new() -> Self {
        Self { table: Arc::default(), page_size: 512 }
    }

    pub fn insert(&self, scope: &Scope, users: impl IntoIterator<Item = User>) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let rows = table.entry(scope.clone()).or_default();
        rows.extend(users.into_iter().map(|u| (u.id, u)));
    }

    /// Adds `count` deterministic synthetic users to `scope`.
    pub fn seed_synthetic(&self, scope: &Scope, count: u64) {
        self.insert(scope, (0..count).map(|i| synthetic::user(scope, i)));
    }

    /// One keyset page: matching users with id > `after`. The lock is held only while copying.
    fn page(&self, scope: &Scope, filter: &UserFilter, after: Option<UserId>, size: usize) -> Vec<User> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let Some(rows) = table.get(scope) else { return Vec::new() };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        rows.range((lower, Bound::Unbounded))
            .map(|(_, u)| u)
            .filter(|u| filter.matches(u))
            .take(size)
            .cloned()
            .collect()
    }
}

struct Cursor {
    after: Option<UserId>,
    remaining: u64,
    done: bool,
}

#[async_trait]
impl UserRepository for MemoryUserRepository {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        let (repo, scope, filter) = (self.clone(), scope.clone(), filter.clone());
        let start = Cursor { after, remaining: limit.unwrap_or(u64::MAX), done: false };
        stream::unfold(start, move |cursor| {
            let (repo, scope, filter) = (repo.clone(), scope.clone(), filter.clone());
            async move {
                if cursor.done || cursor.remaining == 0 {
                    return None;
                }
                let size = usize::try_from(cursor.remaining).unwrap_or(usize::MAX).min(repo.page_size);
                let page = repo.page(&scope, &filter, cursor.after, size);
                let next = Cursor {
                    after: page.last().map(|u| u.id),
                    remaining: cursor.remaining - page.len() as u64,
                    done: page.len() < size,
                };
                Some((stream::iter(page.into_iter().map(Ok)), next))
            }
        })
        .flatten()
        .boxed()
    }

    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        Ok(table.get(scope).map_or(0, |rows| rows.values().filter(|u| filter.matches(u)).count() as u64))
    }

    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}
