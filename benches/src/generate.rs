//! A generated repository of realistic, valid manifests: every kind, with the references
//! between them (envFrom, volumes, HPA targets, namespaces) that the cross-tree checks follow.

use std::fmt::Write as _;
use std::path::Path;

/// Namespaces used by the generated objects; declared in the first file.
const NAMESPACES: usize = 10;

/// Objects per generated file, besides the namespace file.
pub const PER_FILE: usize = 10;

fn app(i: usize, ns: &str) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail, so the fmt::Result is ignored.
    let _ = write!(
        s,
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-{i}-config
  namespace: {ns}
  labels:
    app.kubernetes.io/name: app-{i}
data:
  LOG_LEVEL: info
  index.html: |
    <h1>app {i}</h1>
---
apiVersion: v1
kind: Secret
metadata:
  name: app-{i}-secret
  namespace: {ns}
type: Opaque
stringData:
  password: s3cr3t-{i}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
  namespace: {ns}
  labels:
    app.kubernetes.io/name: app-{i}
    tier: web
spec:
  replicas: 3
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      app.kubernetes.io/name: app-{i}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        app.kubernetes.io/name: app-{i}
        tier: web
    spec:
      containers:
        - name: web
          image: busybox:latest
          command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
          ports:
            - name: http
              containerPort: 8080
          envFrom:
            - configMapRef:
                name: app-{i}-config
          env:
            - name: PASSWORD
              valueFrom:
                secretKeyRef:
                  name: app-{i}-secret
                  key: password
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          resources:
            requests:
              cpu: 100m
              memory: 64Mi
            limits:
              cpu: "1"
              memory: 128Mi
          readinessProbe:
            httpGet:
              path: /
              port: http
            periodSeconds: 5
          livenessProbe:
            tcpSocket:
              port: 8080
            initialDelaySeconds: 3
          volumeMounts:
            - name: content
              mountPath: /www
              readOnly: true
      volumes:
        - name: content
          configMap:
            name: app-{i}-config
---
apiVersion: v1
kind: Service
metadata:
  name: app-{i}
  namespace: {ns}
spec:
  selector:
    app.kubernetes.io/name: app-{i}
  ports:
    - name: http
      port: 80
      targetPort: http
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: app-{i}
  namespace: {ns}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: app-{i}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: 70
---
apiVersion: batch/v1
kind: Job
metadata:
  name: app-{i}-migrate
  namespace: {ns}
spec:
  backoffLimit: 2
  ttlSecondsAfterFinished: 600
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: busybox:latest
          command: ["sh", "-c", "echo migrate {i}"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: app-{i}-report
  namespace: {ns}
spec:
  schedule: "*/15 * * * *"
  timeZone: Etc/UTC
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: busybox:latest
              args: ["date"]
---
apiVersion: v1
kind: Pod
metadata:
  name: app-{i}-debug
  namespace: {ns}
  labels:
    purpose: debug
spec:
  restartPolicy: Always
  containers:
    - name: shell
      image: busybox:latest
      command: ["sleep", "infinity"]
      securityContext:
        runAsUser: 1000
        readOnlyRootFilesystem: true
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: app-{i}-agent
  namespace: {ns}
spec:
  selector:
    matchLabels:
      name: app-{i}-agent
  template:
    metadata:
      labels:
        name: app-{i}-agent
    spec:
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          operator: Exists
          effect: NoSchedule
      containers:
        - name: agent
          image: busybox:latest
          resources:
            limits:
              memory: 32Mi
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: app-{i}-canary
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchExpressions:
      - key: track
        operator: In
        values: [canary]
  template:
    metadata:
      labels:
        track: canary
    spec:
      containers:
        - name: web
          image: busybox:latest
"#
    );
    s
}

/// Writes `files` files (the first one declaring the namespaces) and returns the number of
/// objects written. `progress` is called after each file.
pub fn repository(dir: &Path, files: usize, mut progress: impl FnMut()) -> std::io::Result<usize> {
    let mut ns = String::new();
    for n in 0..NAMESPACES {
        let _ = write!(
            ns,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-{n}\n"
        );
    }
    std::fs::write(dir.join("00-namespaces.yaml"), ns)?;
    let mut objects = NAMESPACES;
    progress();
    for i in 1..files {
        let sub = dir.join(format!("team-{}", i % NAMESPACES));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(
            sub.join(format!("app-{i:04}.yaml")),
            app(i, &format!("team-{}", i % NAMESPACES)),
        )?;
        objects += PER_FILE;
        progress();
    }
    Ok(objects)
}
