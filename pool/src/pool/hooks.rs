//! Connection hooks: code of the application's that runs on a connection after it is
//! opened, before it is handed out, and after it is returned.
//!
//! What each hook does, and what a failing one costs, is in the
//! [`PoolBuilder`](crate::PoolBuilder#hooks) docs.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use super::slot::{Slot, Verdict};
use crate::cause::{Classify, Disposition, Eviction, ResetCause};
use crate::clock::CoarseInstant;
use crate::manager::Manager;

/// The future a hook returns: boxed, so that a closure can borrow the connection.
pub type HookFuture<'c, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'c>>;

/// What a hook or a [`Pool::retain`](crate::Pool::retain) predicate knows about a
/// pooled connection besides the connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The pool's id for the connection, as in trace events and
    /// [`Connection::id`](crate::Connection::id).
    pub id: u64,
    /// The peer's address, when the manager exposes the socket.
    pub peer: Option<SocketAddr>,
    /// How long ago it was opened.
    pub age: Duration,
    /// How long it sat idle in the pool: until now for `retain`, before this checkout
    /// for `before_checkout`; zero for `on_return`.
    pub idle: Duration,
}

type AfterConnect<M> = Box<
    dyn for<'c> Fn(&'c mut <M as Manager>::Connection) -> HookFuture<'c, <M as Manager>::Error>
        + Send
        + Sync,
>;

type WithInfo<M> = Box<
    dyn for<'c> Fn(
            &'c mut <M as Manager>::Connection,
            ConnectionInfo,
        ) -> HookFuture<'c, <M as Manager>::Error>
        + Send
        + Sync,
>;

/// The hooks a pool was built with.
pub(crate) struct Hooks<M: Manager> {
    pub(crate) after_connect: Option<AfterConnect<M>>,
    pub(crate) before_checkout: Option<WithInfo<M>>,
    pub(crate) on_return: Option<WithInfo<M>>,
}

impl<M: Manager> Default for Hooks<M> {
    fn default() -> Self {
        Hooks {
            after_connect: None,
            before_checkout: None,
            on_return: None,
        }
    }
}

impl<M: Manager> fmt::Debug for Hooks<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("after_connect", &self.after_connect.is_some())
            .field("before_checkout", &self.before_checkout.is_some())
            .field("on_return", &self.on_return.is_some())
            .finish()
    }
}

/// Which hook ran, for the log.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    BeforeCheckout,
    OnReturn,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::BeforeCheckout => "before_checkout",
            Hook::OnReturn => "on_return",
        }
    }
}

impl<M: Manager> Slot<M> {
    /// What a hook or a `retain` predicate is told about this connection.
    pub(crate) fn info(&self, now: CoarseInstant, idle: Duration) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            peer: self.peer,
            age: now.saturating_duration_since(self.created),
            idle,
        }
    }
}

/// Runs `hook` on `slot`'s connection: the verdict on the connection, the failure
/// logged with the hook's error.
pub(crate) async fn run<M: Manager>(
    hook: &WithInfo<M>,
    which: Hook,
    slot: &mut Slot<M>,
    idle: Duration,
) -> Verdict {
    let info = slot.info(CoarseInstant::now(), idle);
    let Err(err) = hook(&mut slot.conn, info).await else {
        return Verdict::Keep;
    };
    slot.tally
        .parts
        .core
        .observer
        .hook_failed(slot.id, which.as_str(), &err);
    match err.classify() {
        // The connection broke under the hook (reset, closed, timed out): trouble on
        // the path, counted as such.
        Disposition::Broken { cause, .. } if cause != ResetCause::Other => {
            Verdict::Reset(cause, Some(err.to_string()))
        }
        // The hook turned the connection down for reasons of its own: an error the
        // server answered, or one the hook made up (`io::Error::other`, which
        // classifies as broken with no known cause). The application's decision, not
        // trouble on the path.
        _ => Verdict::Evict(Eviction::HookFailed),
    }
}
