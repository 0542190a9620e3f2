//! `PUT /v1/txn`: Consul's transactions. The body is a list of KV, node, service and check
//! operations, applied in one Raft entry, all or none ([`Command::Txn`]). A transaction of
//! reads alone is answered from the node's state without an entry, honouring `?stale` and
//! `?consistent`, as Consul answers it.

use std::collections::BTreeMap;

use atoll_state::{
    CatalogVerb, Command, KvVerb, Outcome, Registration, TxnKv, TxnOp, TxnOutcome, TxnResult,
};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::input::{CatalogCheckIn, CatalogServiceIn};
use super::wire::{CheckJson, KvJson, NodeJson, ServiceJson};
use crate::acl::Authz;
use crate::decode::decode_body;
use crate::error::ApiError;
use crate::execute::write;
use crate::query::{json_with_index, local_query, ReadOptions};
use crate::ApiContext;

/// Most operations in one transaction (Consul 1.10's `maxTxnOps`, reads included).
pub const MAX_TXN_OPS: usize = 64;

/// Largest transaction body (Consul's default `txn_max_req_len`, 512 KiB).
pub const MAX_TXN_BYTES: usize = 512 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TxnOpIn {
    kv: Option<KvOpIn>,
    node: Option<NodeOpIn>,
    service: Option<ServiceOpIn>,
    check: Option<CheckOpIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KvOpIn {
    verb: String,
    key: String,
    value: Option<String>,
    flags: u64,
    index: u64,
    session: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeOpIn {
    verb: String,
    node: NodeIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeIn {
    node: String,
    address: String,
    datacenter: String,
    taggedaddresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    modifyindex: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServiceOpIn {
    verb: String,
    node: String,
    service: CatalogServiceIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CheckOpIn {
    verb: String,
    check: CatalogCheckIn,
}

/// The body of `PUT /v1/txn` as the operations it asks for. Malformed JSON, an unknown verb,
/// a missing key or name and a value that is not base64 are 400s naming the field
/// (`[2].KV.Verb`); more than [`MAX_TXN_OPS`] operations are Consul's 413.
pub fn parse_txn(body: &[u8], datacenter: &str) -> Result<Vec<TxnOp>, ApiError> {
    if body.len() > MAX_TXN_BYTES {
        return Err(too_large(format!(
            "Request body too large, max size: {MAX_TXN_BYTES} bytes"
        )));
    }
    let ops: Vec<TxnOpIn> = decode_body(body)?;
    if ops.len() > MAX_TXN_OPS {
        return Err(too_large(format!(
            "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
            ops.len()
        )));
    }
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| parse_op(&format!("[{i}]"), op, datacenter))
        .collect()
}

fn too_large(message: String) -> ApiError {
    ApiError::plain(StatusCode::PAYLOAD_TOO_LARGE, message)
}

fn parse_op(at: &str, op: TxnOpIn, datacenter: &str) -> Result<TxnOp, ApiError> {
    match op {
        TxnOpIn { kv: Some(kv), .. } => parse_kv(&format!("{at}.KV"), kv),
        TxnOpIn {
            node: Some(node), ..
        } => {
            let at = format!("{at}.Node");
            let verb = catalog_verb(&at, "Node", &node.verb)?;
            let node = node.node;
            required(&format!("{at}.Node.Node"), &node.node, "Must provide node")?;
            Ok(TxnOp::Node {
                verb,
                index: node.modifyindex,
                node: Registration {
                    node: node.node,
                    address: node.address,
                    datacenter: if node.datacenter.is_empty() {
                        datacenter.to_string()
                    } else {
                        node.datacenter
                    },
                    tagged_addresses: node.taggedaddresses,
                    node_meta: node.meta,
                    ..Default::default()
                },
            })
        }
        TxnOpIn {
            service: Some(op), ..
        } => {
            let at = format!("{at}.Service");
            let verb = catalog_verb(&at, "Service", &op.verb)?;
            required(&format!("{at}.Node"), &op.node, "Must provide node")?;
            let index = op.service.modifyindex;
            let mut service = op.service;
            if !matches!(verb, CatalogVerb::Set | CatalogVerb::Cas) && service.service.is_none() {
                // Reads and deletes name the instance by its id alone.
                service.service = service.id.clone();
            }
            Ok(TxnOp::Service {
                verb,
                node: op.node,
                service: service.into_spec(&format!("{at}.Service"))?,
                index,
            })
        }
        TxnOpIn {
            check: Some(op), ..
        } => {
            let at = format!("{at}.Check");
            let verb = catalog_verb(&at, "Check", &op.verb)?;
            let node = op.check.node.clone().unwrap_or_default();
            required(&format!("{at}.Check.Node"), &node, "Must provide node")?;
            let index = op.check.modifyindex;
            Ok(TxnOp::Check {
                verb,
                node,
                check: Box::new(op.check.into_spec(&format!("{at}.Check"))?),
                index,
            })
        }
        _ => Err(ApiError::field(
            at,
            "no operation specified: expected one of KV, Node, Service or Check",
        )),
    }
}

fn parse_kv(at: &str, op: KvOpIn) -> Result<TxnOp, ApiError> {
    let verb = KvVerb::ALL
        .iter()
        .find(|(_, name)| *name == op.verb)
        .map(|(verb, _)| *verb)
        .ok_or_else(|| {
            ApiError::field(
                &format!("{at}.Verb"),
                format!("unknown KV verb {:?}", op.verb),
            )
        })?;
    if verb != KvVerb::DeleteTree {
        required(&format!("{at}.Key"), &op.key, "Must provide key")?;
    }
    let value = match op.value {
        None => Vec::new(),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| {
                ApiError::field(
                    &format!("{at}.Value"),
                    format!("failed to decode value: {e}"),
                )
            })?,
    };
    Ok(TxnOp::Kv(TxnKv {
        verb,
        key: op.key,
        value,
        flags: op.flags,
        index: op.index,
        session: op.session,
    }))
}

fn catalog_verb(at: &str, kind: &str, verb: &str) -> Result<CatalogVerb, ApiError> {
    CatalogVerb::ALL
        .iter()
        .find(|(_, name)| *name == verb)
        .map(|(verb, _)| *verb)
        .ok_or_else(|| {
            ApiError::field(
                &format!("{at}.Verb"),
                format!("unknown {kind} verb {verb:?}"),
            )
        })
}

fn required(field: &str, value: &str, message: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        Err(ApiError::field(field, message))
    } else {
        Ok(())
    }
}

/// `PUT /v1/txn`: 200 with `Results` when every operation succeeded, 409 with `Errors`
/// (each failed operation's index and Consul's text) when any failed, and then nothing was
/// applied. Every operation must be allowed by the caller's token, else 403 and nothing
/// is applied.
pub async fn apply(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    let ops = parse_txn(&body, context.datacenter())?;
    context
        .store()
        .read(|state| super::vet::transaction(&authz, state, &ops))?;
    if !ops.iter().any(TxnOp::is_write) {
        // Reads alone: from this node's state, as fresh as `?stale`/`?consistent` ask.
        let options = ReadOptions::parse(&query, &context)?;
        if let Some(mode) = options.mode {
            context.cluster().linearize(mode).await?;
        }
        let store = context.store();
        let (index, outcome) = store.read(|state| (state.indexes.kv, state.read_txn(&ops)));
        return Ok(answer(&context, index, &outcome));
    }
    // Lock delay is checked before proposing, as Consul's leader does for `?acquire=`.
    let mut delayed = TxnOutcome::default();
    for (op_index, op) in ops.iter().enumerate() {
        if let TxnOp::Kv(TxnKv {
            verb: KvVerb::Lock,
            key,
            ..
        }) = op
        {
            if context.agent().sessions().lock_delay(key).await?.is_some() {
                delayed.errors.push(atoll_state::TxnError {
                    op_index,
                    what: format!("failed to lock key {key:?} due to lock delay"),
                });
            }
        }
    }
    if !delayed.errors.is_empty() {
        return Ok(answer(&context, context.store().applied(), &delayed));
    }
    let outcome = match write(&context, Command::Txn(ops)).await? {
        Outcome::Txn(outcome) => outcome,
        other => {
            return Err(ApiError::with_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected outcome of a transaction: {other:?}"),
            ))
        }
    };
    Ok(answer(&context, context.store().applied(), &outcome))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnJson<'a> {
    results: Option<Vec<ResultJson<'a>>>,
    errors: Option<Vec<ErrorJson<'a>>>,
}

#[derive(Serialize)]
enum ResultJson<'a> {
    #[serde(rename = "KV")]
    Kv(KvJson<'a>),
    Node(NodeJson<'a>),
    Service(ServiceJson<'a>),
    Check(Box<CheckJson<'a>>),
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorJson<'a> {
    op_index: usize,
    what: &'a str,
}

fn answer(context: &ApiContext, index: u64, outcome: &TxnOutcome) -> Response {
    if outcome.errors.is_empty() {
        let results = outcome
            .results
            .iter()
            .map(|result| match result {
                TxnResult::Kv(entry) => ResultJson::Kv(KvJson::new(entry)),
                TxnResult::Node(node) => ResultJson::Node(NodeJson::new(node)),
                TxnResult::Service(service) => {
                    ResultJson::Service(ServiceJson::new(service, context.datacenter()))
                }
                TxnResult::Check(check) => ResultJson::Check(Box::new(CheckJson::new(check))),
            })
            .collect();
        return json_with_index(
            index,
            &TxnJson {
                results: Some(results),
                errors: None,
            },
        );
    }
    let errors = outcome
        .errors
        .iter()
        .map(|e| ErrorJson {
            op_index: e.op_index,
            what: &e.what,
        })
        .collect();
    let mut response = json_with_index(
        index,
        &TxnJson {
            results: None,
            errors: Some(errors),
        },
    );
    *response.status_mut() = StatusCode::CONFLICT;
    response.into_response()
}
