// Validates custom resources against their CRDs' published OpenAPI schemas, through the
// models of @kubernetes-models/keda and @kubernetes-models/prometheus-operator (their
// `validate()` runs the CRD's schema, compiled by ajv). Installed, pinned, by setup.sh
// into .cache/kubernetes-npm.
//
// Usage: node validate-crds.mjs NODE_MODULES_DIR < objects.json
// stdin: a JSON array of Kubernetes objects; stdout: a JSON array, one entry per object:
// {"kind", "name", "ok", "errors"}. Exits 2 on an object of a kind it has no model for.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node validate-crds.mjs NODE_MODULES_DIR < objects.json");
  process.exit(2);
}
const models = {
  "keda.sh/v1alpha1/ScaledObject": ["@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js", "ScaledObject"],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
    "ServiceMonitor",
  ],
};

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  if (!(key in models)) {
    console.error(`no model for ${key}`);
    process.exit(2);
  }
  const [file, name] = models[key];
  const Model = (await import(pathToFileURL(join(modules, file)).href))[name];
  let errors = [];
  try {
    new Model(obj).validate();
  } catch (e) {
    errors = [String(e && e.message ? e.message : e)];
  }
  results.push({ kind: obj.kind, name: obj.metadata?.name, ok: errors.length === 0, errors });
}
console.log(JSON.stringify(results));
