"""The pure decision logic of `conveyor server` (issue #13): no HTTP, no I/O, no clock.

One concept per module, each a set of small typed functions the server wires together:

* `events`      forge webhook payloads (GitHub, GitLab, Gitea) -> `TriggerEvent` | `Ignored`
* `signatures`  is a webhook delivery authentic (constant-time HMAC / token checks)
* `filters`     the pipeline's `on:` mapping and whether an event starts a run
* `cron`        5-field cron expressions, next tick in a time zone, the one tick due now
* `concurrency` which runs of a concurrency group to cancel, and whether a new one waits

Every function takes what it decides on as arguments (the current time included), so the
tests run in milliseconds and the server stays a thin layer of I/O. The user-facing rules
are in docs/triggers.md.
"""
