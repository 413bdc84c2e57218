//! `memory:`: nothing survives the process. Executions live only in the host's own table (see
//! `ledger`); this driver keeps just what the store contract must decide atomically for one
//! process — idempotency keys, with their TTL on the host clock, the version of each function —
//! and a random callback secret.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Event, Info, KeyRecord, Location, ProcessRecord, Replaced, Store, StoreError, TakeOver, TakenOver, Write, Written,
};
use crate::execution::Record;
use crate::function::FunctionSpec;

#[derive(Default)]
struct Keys {
    live: HashMap<(String, String), (KeyRecord, Instant)>,
    /// In the order they were set (their expiry order).
    order: VecDeque<(Instant, (String, String))>,
}

pub struct MemoryStore {
    info: Info,
    keys: Mutex<Keys>,
    /// The version of each registered function (the specs live in the host's registry).
    versions: Mutex<HashMap<String, u64>>,
    secret: Vec<u8>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let secret = (0..32).map(|_| fastrand::u8(..)).chain(uuid::Uuid::new_v4().into_bytes()).collect();
        Self {
            info: Info { location: Location::Memory, durable: false, shared: false },
            keys: Mutex::new(Keys::default()),
            versions: Mutex::default(),
            secret,
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        let mut keys = self.keys.lock().expect("key lock");
        let now = Instant::now();
        while let Some((expires, _)) = keys.order.front() {
            if *expires > now {
                break;
            }
            let (expires, key) = keys.order.pop_front().expect("front exists");
            // Only remove the entry this queue item was for (the key may have been set again).
            if keys.live.get(&key).is_some_and(|(_, e)| *e == expires) {
                keys.live.remove(&key);
            }
        }
        keys
    }
}

/// The host-clock instant of a wall-clock expiry (the TTL is what the caller meant).
fn expiry(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    fn info(&self) -> &Info {
        &self.info
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        Ok(match write {
            Write::Insert { record, key, .. } => {
                let Some(key) = key else { return Ok(Written::Inserted) };
                let mut keys = self.keys();
                let k = (key.function.clone(), key.key.clone());
                if let Some((existing, _)) = keys.live.get(&k)
                    && existing.execution_id != record.id
                {
                    return Ok(Written::Existing(existing.clone()));
                }
                let expires = expiry(key.expires_at);
                keys.live.insert(k.clone(), (key, expires));
                keys.order.push_back((expires, k));
                Written::Inserted
            }
            Write::Settle { .. } => Written::Settled,
            Write::TakeSlot { .. } => Written::Slot(true),
            Write::ForgetKey { function, key } => {
                self.keys().live.remove(&(function, key));
                Written::Done
            }
            Write::Start { .. } | Write::Pending { .. } | Write::Process(_) | Write::ForgetProcess { .. } => {
                Written::Done
            }
        })
    }

    fn write_behind(&self, _write: Write) {}

    async fn execution(&self, _id: &str) -> Result<Option<Record>, StoreError> {
        Ok(None)
    }

    async fn key(&self, function: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.keys().live.get(&(function.to_string(), key.to_string())).map(|(k, _)| k.clone()))
    }

    async fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        Ok(Vec::new())
    }

    async fn function(&self, _name: &str) -> Result<Option<FunctionSpec>, StoreError> {
        Ok(None)
    }

    async fn create_function(&self, spec: &FunctionSpec) -> Result<bool, StoreError> {
        let mut versions = self.versions.lock().expect("versions lock");
        if versions.contains_key(&spec.name) {
            return Ok(false);
        }
        versions.insert(spec.name.clone(), 1);
        Ok(true)
    }

    async fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError> {
        let mut versions = self.versions.lock().expect("versions lock");
        let version = versions.entry(spec.name.clone()).and_modify(|v| *v += 1).or_insert(1);
        Ok(*version)
    }

    async fn replace_function(&self, spec: &FunctionSpec, expected: Option<u64>) -> Result<Replaced, StoreError> {
        let mut versions = self.versions.lock().expect("versions lock");
        Ok(match versions.get_mut(&spec.name) {
            None => Replaced::Missing,
            Some(current) if expected.is_some_and(|e| e != *current) => Replaced::Changed(*current),
            Some(current) => {
                *current += 1;
                Replaced::Done(*current)
            }
        })
    }

    async fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.versions.lock().expect("versions lock").remove(name).is_some())
    }

    async fn secret(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.secret.clone())
    }

    async fn join(&self, _replica: &str, _ttl: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    async fn renew(&self, _replica: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn leave(&self, _replica: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn take_over(&self, _me: &str, _scope: TakeOver) -> Result<TakenOver, StoreError> {
        Ok(TakenOver::default())
    }

    async fn take_processes(&self, _replicas: &[String], _machine: &str) -> Result<Vec<ProcessRecord>, StoreError> {
        Ok(Vec::new())
    }

    async fn evict(&self, _retention: Duration, _max_retained: usize) -> Result<u64, StoreError> {
        drop(self.keys());
        Ok(0)
    }

    fn events(&self) -> Option<broadcast::Receiver<Event>> {
        None
    }
}
