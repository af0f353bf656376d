"""The one Celery application, configured identically for every worker and submitter.

Settings that make long jobs safe on Redis (see Celery's "Redis caveats"): late acks with
prefetch 1 so a dead worker's job is redelivered rather than lost; a visibility timeout
longer than the longest allowed job so a live job is not handed to a second worker (the
lease in the state store makes that harmless when it happens anyway); results kept longer
than the longest pipeline so chord counters never expire mid-run.

TLS: a `rediss://` URL (broker, result backend or state store) takes its TLS settings from
its query string, read the same way by all three:

    rediss://:PASSWORD@host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/conveyor/ca.pem

| parameter | values | default |
|---|---|---|
| `ssl_cert_reqs` | `required`, `optional`, `none` | `required` |
| `ssl_ca_certs` | PEM file of the CA(s) that signed the server's certificate | the system CAs |
| `ssl_certfile`, `ssl_keyfile` | client certificate and key (servers with `tls-auth-clients yes`) | none |
| `ssl_check_hostname` | `true`, `false` | redis-py's default |

Celery and kombu would each default a bare `rediss://` to no verification (kombu with a
warning, Celery's result backend with an error); here the default is `required`.
"""
from __future__ import annotations

import ssl
import weakref
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from celery import Celery
from kombu import Queue

from shared.config import RESULT_EXPIRES, ConfigError, Settings
# The queue names (and the label queues `jobs.labels.*`) are defined with the label routing.
from shared.worker_labels import DEPLOY_QUEUE, JOBS_QUEUE

RUN_JOB_TASK = "conveyor.run_job"
DEPLOY_TICK_TASK = "conveyor.deploy_tick"


SSL_PARAMETERS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
BROKER_CHECK_TIMEOUT = 5.0
# The settings each app was created from. Celery's own configuration is not the place:
# `celery inspect conf`, `inspect report` and Flower's worker page print every key of it.
_SETTINGS: weakref.WeakKeyDictionary[Celery, Settings] = weakref.WeakKeyDictionary()


class BrokerUnavailable(Exception):
    """A Redis URL this process needs does not answer, refuses the password, or fails TLS."""


def broker_url(settings: Settings) -> str:
    return settings.broker_url or "memory://"


def redis_ssl_options(url: str) -> dict | None:
    """The TLS options of a `rediss://` URL (see the module docstring); None for other schemes.

    The dict is what kombu's `broker_use_ssl`, Celery's `redis_backend_use_ssl` and
    redis-py's SSL connection all take. Raises ConfigError on an unknown value.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required")
    key = reqs.lower().removeprefix("cert_")
    if key not in _CERT_REQS:
        raise ConfigError(f"ssl_cert_reqs={reqs!r} in a rediss:// URL: expected required, optional or none")
    options: dict = {"ssl_cert_reqs": _CERT_REQS[key]}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(name):
            options[name] = unquote(query[name])
    if "ssl_check_hostname" in query:
        flag = query["ssl_check_hostname"].lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"ssl_check_hostname={flag!r} in a rediss:// URL: expected true or false")
        options["ssl_check_hostname"] = flag in ("true", "1", "yes")
    return options


def without_ssl_parameters(url: str) -> str:
    """`url` minus the TLS query parameters, which travel as options instead."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in SSL_PARAMETERS]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def settings_of(app: Celery) -> Settings:
    """The settings `app` was created from (KeyError for an app `create_app` did not make)."""
    return _SETTINGS[app]


def redacted(url: str) -> str:
    """`url` with its password replaced by `***`, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{netloc}", parts.path, parts.query, parts.fragment))


def check_redis_urls(settings: Settings, timeout: float = BROKER_CHECK_TIMEOUT) -> None:
    """PING every Redis the settings name (broker, result backend, state store) once.

    Raises BrokerUnavailable with a message naming the URL (password hidden) and what
    went wrong: a refused password, a TLS failure or no answer within `timeout` seconds.
    Celery itself would retry a refused password forever without saying so clearly.
    """
    import redis

    urls = [settings.broker_url, settings.effective_result_backend, settings.effective_state_url]
    for url in dict.fromkeys(u for u in urls if u and urlsplit(u).scheme in ("redis", "rediss")):
        client = redis.Redis.from_url(without_ssl_parameters(url), socket_connect_timeout=timeout,
                                      socket_timeout=timeout, **(redis_ssl_options(url) or {}))
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            raise BrokerUnavailable(f"{redacted(url)} refused the credentials ({exc}); "
                                    "check the password in the URL") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise BrokerUnavailable(f"{redacted(url)} needs a password ({exc}): "
                                        "use redis://:PASSWORD@host:port/db") from None
            raise BrokerUnavailable(f"{redacted(url)}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            hint = " (TLS: check ssl_ca_certs and that the server speaks TLS on this port)" \
                if urlsplit(url).scheme == "rediss" else ""
            raise BrokerUnavailable(f"cannot reach {redacted(url)}: {exc}{hint}") from None
        finally:
            client.close()


def create_app(settings: Settings) -> Celery:
    backend = settings.effective_result_backend
    app = Celery("conveyor", broker=without_ssl_parameters(broker_url(settings)),
                 backend=without_ssl_parameters(backend))
    transport_options: dict = {"visibility_timeout": settings.visibility_timeout}
    if settings.embedded:
        # In-process memory transport polls; keep hops short.
        transport_options["polling_interval"] = 0.01
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_expires=RESULT_EXPIRES,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_queues=(Queue(JOBS_QUEUE), Queue(DEPLOY_QUEUE)),
        task_default_queue=JOBS_QUEUE,
        task_routes={RUN_JOB_TASK: {"queue": JOBS_QUEUE}, DEPLOY_TICK_TASK: {"queue": DEPLOY_QUEUE}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Flower shows task names and kwargs (run id, job name: never secrets) from worker
        # events, so workers send them from the start. No "sent" events and no STARTED
        # results: the state store tells when a job started, and each costs a Redis write
        # on every hop.
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        redis_socket_keepalive=True,
        broker_use_ssl=redis_ssl_options(broker_url(settings)) or False,
        redis_backend_use_ssl=redis_ssl_options(backend) or None,
    )
    # Kept outside Celery's conf: `inspect conf` and Flower show every conf key.
    _SETTINGS[app] = settings
    return app
