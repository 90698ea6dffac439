//! `coxswain top pods [NAME] [-n NS|-A] [--containers]`: the cpu and memory each pod uses,
//! from the `PodMetrics` the node agents store (see `coxswain_node::agent::metrics`),
//! printed with `kubectl top pod`'s columns and units (cpu in millicores, rounded up;
//! memory in Mi).

use std::process::ExitCode;

use anyhow::{Context, bail};
use coxswain_node::agent::metrics::PREFIX;
use coxswain_schema::quantity::Quantity;
use coxswain_store::{Client, Kv};
use serde_json::Value;

use crate::get::{Endpoint, align, list_under};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to show: pods (po).
    resource: String,
    /// Only this pod.
    name: Option<String>,
    /// The namespace to show.
    #[arg(
        short,
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// One line per container instead of per pod.
    #[arg(long)]
    containers: bool,
    #[command(flatten)]
    from: Endpoint,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if !matches!(
        args.resource.to_ascii_lowercase().as_str(),
        "po" | "pod" | "pods"
    ) {
        bail!(
            "coxswain top shows pods only (got {:?}): nodes report no metrics yet",
            args.resource
        );
    }
    let (address, token) = args.from.resolve()?;
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = Client::new(vec![address.clone()], &token);
    let items = rt
        .block_on(read(&client, namespace, args.name.as_deref()))
        .with_context(|| format!("reading pod metrics from {address}"))?;
    if items.is_empty() {
        match (&args.name, namespace) {
            (Some(name), _) => eprintln!(
                "error: metrics not available yet for pod {name:?} (they appear one sampling \
                 period, 15 s by default, after its containers start)"
            ),
            (None, Some(ns)) => eprintln!("No resources found in {ns} namespace."),
            (None, None) => eprintln!("No resources found"),
        }
        return Ok(ExitCode::from(u8::from(args.name.is_some())));
    }
    let rows = rows(&items, args.all_namespaces, args.containers)?;
    print!("{}", align(&rows));
    Ok(ExitCode::SUCCESS)
}

async fn read<K: Kv>(
    kv: &K,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let prefix = match namespace {
        Some(ns) => format!("{PREFIX}{ns}/"),
        None => PREFIX.to_owned(),
    };
    list_under(kv, &prefix, name).await
}

/// One container's usage: millicores (rounded up, as kubectl's `MilliValue`) and bytes.
fn usage(container: &Value) -> anyhow::Result<(i64, i64)> {
    let field = |name: &str| -> anyhow::Result<Quantity> {
        container["usage"][name]
            .as_str()
            .map(Quantity::new)
            .with_context(|| format!("a container's usage has no {name}"))
    };
    let cpu = field("cpu")?
        .milli_value()
        .map_err(|e| anyhow::anyhow!("usage.cpu: {e}"))?;
    let memory = field("memory")?
        .value()
        .map_err(|e| anyhow::anyhow!("usage.memory: {e}"))?;
    Ok((cpu, memory))
}

fn cells(cpu: i64, memory: i64) -> [String; 2] {
    [format!("{cpu}m"), format!("{}Mi", memory / (1024 * 1024))]
}

/// kubectl's table: NAMESPACE (with -A), POD and NAME (with --containers) or NAME,
/// CPU(cores), MEMORY(bytes).
fn rows(
    items: &[Value],
    all_namespaces: bool,
    containers: bool,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut header = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE".to_owned());
    }
    if containers {
        header.push("POD".to_owned());
    }
    header.extend(["NAME", "CPU(cores)", "MEMORY(bytes)"].map(str::to_owned));
    let mut rows = vec![header];
    for item in items {
        let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
        let pod = item["metadata"]["name"].as_str().unwrap_or_default();
        let list = item["containers"].as_array().map_or(&[][..], Vec::as_slice);
        let mut lead = Vec::new();
        if all_namespaces {
            lead.push(ns.to_owned());
        }
        let mut total = (0, 0);
        for c in list {
            let (cpu, memory) =
                usage(c).with_context(|| format!("the metrics of pod {ns}/{pod}"))?;
            total = (total.0 + cpu, total.1 + memory);
            if containers {
                let mut row = lead.clone();
                row.push(pod.to_owned());
                row.push(c["name"].as_str().unwrap_or_default().to_owned());
                row.extend(cells(cpu, memory));
                rows.push(row);
            }
        }
        if !containers {
            let mut row = lead;
            row.push(pod.to_owned());
            row.extend(cells(total.0, total.1));
            rows.push(row);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metrics(ns: &str, name: &str, containers: &[(&str, &str, &str)]) -> Value {
        json!({
            "kind": "PodMetrics",
            "metadata": {"namespace": ns, "name": name},
            "containers": containers.iter().map(|(n, cpu, mem)| json!({
                "name": n, "usage": {"cpu": cpu, "memory": mem}
            })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn pods_sum_their_containers_in_kubectl_units() {
        let items = [
            metrics(
                "demo",
                "web-1",
                &[("web", "1500001n", "2048Ki"), ("side", "0n", "1048576")],
            ),
            metrics("demo", "web-2", &[("web", "250000000n", "10Mi")]),
        ];
        let text = align(&rows(&items, false, false).unwrap());
        assert_eq!(
            text,
            "NAME    CPU(cores)   MEMORY(bytes)\n\
             web-1   2m           3Mi\n\
             web-2   250m         10Mi\n"
        );
        let text = align(&rows(&items, true, true).unwrap());
        assert_eq!(
            text,
            "NAMESPACE   POD     NAME   CPU(cores)   MEMORY(bytes)\n\
             demo        web-1   web    2m           2Mi\n\
             demo        web-1   side   0m           1Mi\n\
             demo        web-2   web    250m         10Mi\n"
        );
    }

    #[test]
    fn unreadable_usage_names_the_pod() {
        let items = [metrics("demo", "bad", &[("web", "lots", "1Ki")])];
        let err = rows(&items, false, false).unwrap_err();
        assert!(format!("{err:#}").contains("demo/bad"), "{err:#}");
        assert!(format!("{err:#}").contains("usage.cpu"), "{err:#}");
    }
}
