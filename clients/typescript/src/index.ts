// @boilerhouse/events: publish Boilerhouse lifecycle events as docs/events.md specifies.
export { ENTRY_FIELD, type Entries, encodeBatch, encodeEntries, type WireEvent } from "./codec.js";
export * from "./events.generated.js";
export { type FieldsArg, type Logger, Publisher, type PublisherOptions, stopwatch } from "./publisher.js";
export { crc32, DEFAULT_PREFIX, makeSrc, partitionOf, streamKey } from "./streams.js";
