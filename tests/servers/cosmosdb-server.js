// @vercel/cosmosdb-server for the tests, listening on plain HTTP at 127.0.0.1:PORT (argv[2]).
//
// Two changes to how it answers, both to behave as Azure Cosmos DB does:
// - A point read of a missing document answers 404 NotFound (the package dereferences the
//   missing document and answers 500).
// - With COSMOS_FAULT_EVERY=N, every Nth document write answers COSMOS_FAULT_STATUS (429 by
//   default, with x-ms-retry-after-ms: 20) and writes nothing, as a throttled or busy
//   account does.
// Handlers must be replaced before the package's routes table is built, so this file
// requires them first.
const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
const upsertDocument = require("@vercel/cosmosdb-server/lib/handler/upsert-document");

const notFound = { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
const readMissingAs404 = readDocument.default;
readDocument.default = (account, req, res, params) => {
  try {
    return readMissingAs404(account, req, res, params);
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
    res.statusCode = 404;
    return notFound;
  }
};

const faultEvery = Number(process.env.COSMOS_FAULT_EVERY || 0);
const faultStatus = Number(process.env.COSMOS_FAULT_STATUS || 429);
let writes = 0;
const upsert = upsertDocument.default;
upsertDocument.default = (account, req, res, params) => {
  writes += 1;
  if (faultEvery && writes % faultEvery === 0) {
    res.statusCode = faultStatus;
    res.setHeader("x-ms-retry-after-ms", "20");
    return { code: faultStatus === 429 ? "TooManyRequests" : "ServiceUnavailable", message: "injected" };
  }
  return upsert(account, req, res, params);
};

const { createHttpServer } = require("@vercel/cosmosdb-server");
const port = Number(process.argv[2]);
createHttpServer().listen(port, "127.0.0.1", () => console.log(`cosmosdb-server on ${port}`));
