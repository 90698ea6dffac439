//! ImageLocality (weight 1): prefers nodes that already hold the pod's images, weighing each
//! image by its size and by how many nodes have it (an image on every node says little about
//! this one, and spreading pods where an image happens to be avoids a hot spot).

use super::pod_info::PodInfo;
use super::{NodeInfo, Snapshot};

/// Kubernetes' default weight for ImageLocality.
pub const WEIGHT: i64 = 1;

const MB: i64 = 1024 * 1024;
/// Below this sum the score is 0: small images download fast anyway.
const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, the sum at which the score reaches 100.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// Kubernetes' `normalizedImageName`: an image without a tag or digest means `:latest`.
pub fn normalize(image: &str) -> String {
    let colon = image.rfind(':');
    let slash = image.rfind('/');
    let tagged = match (colon, slash) {
        (Some(c), Some(s)) => c > s,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if tagged {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Sum over the pod's images present on the node of `size * nodes having it / all nodes`,
/// clamped between the thresholds and scaled to 0..=100 (Kubernetes' `calculatePriority`).
pub fn node_score(pod: &PodInfo, node: &NodeInfo, snapshot: &Snapshot) -> i64 {
    let total = snapshot.nodes.len().max(1) as f64;
    let sum: i64 = pod
        .images
        .iter()
        .filter_map(|image| {
            let size = *node.images.get(image)?;
            let spread = snapshot.image_nodes.get(image).copied().unwrap_or(0) as f64 / total;
            Some((size as f64 * spread) as i64)
        })
        .sum();
    let max_threshold = MAX_CONTAINER_THRESHOLD * pod.images.len() as i64;
    if max_threshold <= MIN_THRESHOLD {
        return 0;
    }
    let sum = sum.clamp(MIN_THRESHOLD, max_threshold);
    100 * (sum - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
}

/// Scores every feasible node by [`node_score`]. Skipped (all 0, which is what every node
/// would score) when none of the pod's images is on any node: the common case while nodes
/// report no images, and it saves a map lookup per image per node.
pub fn score(pod: &PodInfo, snapshot: &Snapshot, feasible: &[usize], out: &mut [i64]) {
    if !pod
        .images
        .iter()
        .any(|i| snapshot.image_nodes.contains_key(i))
    {
        return;
    }
    for (o, &i) in out.iter_mut().zip(feasible) {
        *o = node_score(pod, &snapshot.nodes[i], snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, pod_json};
    use serde_json::json;

    #[test]
    fn image_names_get_latest_when_untagged() {
        let cases = [
            ("nginx", "nginx:latest"),
            ("nginx:1.25", "nginx:1.25"),
            ("registry:5000/app", "registry:5000/app:latest"),
            ("registry:5000/app:v1", "registry:5000/app:v1"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want);
        }
    }

    #[test]
    fn nodes_holding_big_images_score_higher() {
        // Four nodes; "big" (500 MiB) is on n0 and n1, "small" (10 MiB) on n2.
        let nodes: Vec<_> = (0..4)
            .map(|i| node(&format!("n{i}"), "1", "1Gi", "10"))
            .collect();
        let mut snap = Snapshot::new(&nodes, &[]);
        assert!(snap.set_node_images("n0", [("big".to_string(), 500 * MB)]));
        assert!(snap.set_node_images("n1", [("big:latest".to_string(), 500 * MB)]));
        assert!(snap.set_node_images("n2", [("small".to_string(), 10 * MB)]));
        let pod = PodInfo::new(&pod_json(
            "p",
            json!({"containers": [{"name": "c", "image": "big"}]}),
        ));
        // n0: 500 MiB * 2/4 = 250 MiB → 100 * (250 - 23) / (1000 - 23) = 23.
        // n2: small is not the pod's image → 0. n3: nothing → 0.
        let feasible = [0, 1, 2, 3];
        let mut out = [0; 4];
        score(&pod, &snap, &feasible, &mut out);
        assert_eq!(out, [23, 23, 0, 0]);
        // Replacing a node's images updates the spread: big now only on n0 → 125 MiB → 10.
        assert!(snap.set_node_images("n1", []));
        let mut out = [0; 4];
        score(&pod, &snap, &feasible, &mut out);
        assert_eq!(out, [10, 0, 0, 0]);
    }
}
