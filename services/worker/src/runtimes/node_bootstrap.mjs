// Nimbus Node.js runtime: loads `file.export` from LAMBDA_TASK_ROOT and serves
// invocations through the Lambda Runtime API (shipped with the worker).
// Handlers may be async (return a value or a promise) or take a callback.
import http from "node:http";
import path from "node:path";
import fs from "node:fs";
import { pathToFileURL } from "node:url";

const API = process.env.AWS_LAMBDA_RUNTIME_API;
const [HOST, PORT] = API.split(":");
const BASE = "/2018-06-01/runtime";
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = http.request(
      { host: HOST, port: PORT, method, path: BASE + p, agent,
        headers: { ...headers, ...(data ? { "Content-Length": data.length } : {}) } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      });
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

function errorDoc(err, type) {
  const e = err instanceof Error ? err : new Error(String(err));
  return {
    errorType: type || e.name || "Error",
    errorMessage: e.message,
    stackTrace: (e.stack || "").split("\n").slice(1).map((l) => l.trim()),
  };
}

async function initError(doc) {
  console.error(`${doc.errorType}: ${doc.errorMessage}`);
  await request("POST", "/init/error", JSON.stringify(doc),
    { "Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": doc.errorType });
  process.exit(1);
}

async function loadHandler() {
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const spec = process.env._HANDLER || "";
  const dot = spec.lastIndexOf(".");
  if (dot <= 0) {
    return initError({ errorType: "Runtime.MalformedHandlerName", errorMessage: `Bad handler ${spec}`, stackTrace: [] });
  }
  const modulePath = spec.slice(0, dot);
  const exportName = spec.slice(dot + 1);
  const base = path.resolve(root, modulePath);
  const file = [".js", ".mjs", ".cjs"].map((ext) => base + ext).find((f) => fs.existsSync(f));
  if (!file) {
    return initError({ errorType: "Runtime.ImportModuleError",
      errorMessage: `Error: Cannot find module '${modulePath}'`, stackTrace: [] });
  }
  let mod;
  try {
    mod = await import(pathToFileURL(file).href);
  } catch (e) {
    return initError(errorDoc(e, e instanceof SyntaxError ? "Runtime.UserCodeSyntaxError" : "Runtime.ImportModuleError"));
  }
  const fn = mod[exportName] ?? mod.default?.[exportName];
  if (typeof fn !== "function") {
    return initError({ errorType: "Runtime.HandlerNotFound",
      errorMessage: `${modulePath}.${exportName} is undefined or not exported`, stackTrace: [] });
  }
  return fn;
}

function makeContext(headers) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"] || 0);
  return {
    awsRequestId: headers["lambda-runtime-aws-request-id"],
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

function run(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const callback = (err, result) => {
      if (settled) return;
      settled = true;
      err ? reject(err) : resolve(result);
    };
    try {
      const out = handler(event, context, callback);
      if (handler.length < 3 || (out && typeof out.then === "function")) {
        Promise.resolve(out).then((v) => callback(null, v), (e) => callback(e ?? new Error("rejected")));
      }
    } catch (e) {
      callback(e);
    }
  });
}

const handler = await loadHandler();
for (;;) {
  const next = await request("GET", "/invocation/next");
  const id = next.headers["lambda-runtime-aws-request-id"];
  const context = makeContext(next.headers);
  let event;
  try {
    event = next.body.length ? JSON.parse(next.body.toString("utf8")) : {};
  } catch (e) {
    event = next.body.toString("utf8");
  }
  try {
    const result = await run(handler, event, context);
    const body = JSON.stringify(result === undefined ? null : result);
    await request("POST", `/invocation/${id}/response`, body, { "Content-Type": "application/json" });
  } catch (e) {
    const doc = errorDoc(e);
    console.error(`${new Date().toISOString()}\t${id}\tERROR\t${doc.errorType}: ${doc.errorMessage}`);
    await request("POST", `/invocation/${id}/error`, JSON.stringify(doc),
      { "Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": doc.errorType });
  }
}
