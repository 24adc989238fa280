//! The control-plane calls the pipeline makes, behind one trait: the agent
//! implements it with its HTTP client, report queue and status; the unit tests
//! with a recording fake.

use std::future::Future;

use serde_json::Value;

use crate::client::{Assigned, ClientError};
use crate::download::{self, DownloadError, DownloadOptions, DownloadSpec, Outcome};
use crate::reporter::{Delivery, QueueError};
use crate::service::{Agent, Status};

/// The question of `GET /api/v1/agent/assigned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedQuery<'a> {
    pub os: &'a str,
    pub arch: &'a str,
    /// The installed runtime's version (empty: none).
    pub runtime: &'a str,
    pub pinned: Option<&'a str>,
    /// A command's version (else the assignment).
    pub version: Option<&'a str>,
    /// Asked because of a command: the answering replica must read the
    /// assignment from the database, not its cache (the command's own change
    /// may not have reached that replica's cache yet).
    pub fresh: bool,
}

/// What the pipeline asks of and tells the control plane.
pub trait ControlPlane: Sync {
    /// What is assigned to this agent (or the packages of `q.version`).
    fn assigned(
        &self,
        q: AssignedQuery<'_>,
    ) -> impl Future<Output = Result<Assigned, ClientError>> + Send;

    /// Take one of the fleet's upgrade slots; `Conflict` when none is free.
    fn acquire_slot(
        &self,
        to_version: &str,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Give the slot back.
    fn release_slot(&self) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Open an Upgrade History attempt; its id.
    fn create_attempt(
        &self,
        from: &str,
        to: &str,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;

    /// POST a report (stage, finish, issues) through the report queue.
    fn report(
        &self,
        path: &str,
        body: Value,
    ) -> impl Future<Output = Result<Delivery, QueueError>> + Send;

    /// Set and publish the agent's status.
    fn publish_status(&self, status: Status) -> impl Future<Output = ()> + Send;

    /// Fetch one package file.
    fn download(
        &self,
        spec: &DownloadSpec,
        opts: &DownloadOptions,
    ) -> impl Future<Output = Result<Outcome, DownloadError>> + Send;

    /// The HTTP client for ranged package reads (delta downloads); `None`: full
    /// downloads only (as in the recording fake of the unit tests).
    fn ranged_http(&self) -> Option<&reqwest::Client> {
        None
    }

    /// The control plane's base URL.
    fn base(&self) -> &reqwest::Url;

    /// The agent's token (the deploy runner's too).
    fn token(&self) -> &str;

    /// A path or URL from the control plane, resolved against its base URL.
    fn resolve(&self, path_or_url: &str) -> Result<reqwest::Url, ClientError>;
}

impl ControlPlane for Agent {
    async fn assigned(&self, q: AssignedQuery<'_>) -> Result<Assigned, ClientError> {
        self.client
            .assigned(q.os, q.arch, q.runtime, q.pinned, q.version, q.fresh)
            .await
    }

    async fn acquire_slot(&self, to_version: &str) -> Result<(), ClientError> {
        self.client.acquire_slot(to_version).await
    }

    async fn release_slot(&self) -> Result<(), ClientError> {
        self.client.release_slot().await
    }

    async fn create_attempt(&self, from: &str, to: &str) -> Result<Value, ClientError> {
        self.client.create_attempt(from, to).await
    }

    async fn report(&self, path: &str, body: Value) -> Result<Delivery, QueueError> {
        self.reporter.send("POST", path, body).await
    }

    async fn publish_status(&self, status: Status) {
        self.set_status(status).await
    }

    async fn download(
        &self,
        spec: &DownloadSpec,
        opts: &DownloadOptions,
    ) -> Result<Outcome, DownloadError> {
        download::download(self.client.download_http(), spec, opts).await
    }

    fn ranged_http(&self) -> Option<&reqwest::Client> {
        Some(self.client.download_http())
    }

    fn base(&self) -> &reqwest::Url {
        self.client.base()
    }

    fn token(&self) -> &str {
        self.client.token()
    }

    fn resolve(&self, path_or_url: &str) -> Result<reqwest::Url, ClientError> {
        self.client.resolve(path_or_url)
    }
}
