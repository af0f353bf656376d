"""The deployment engine: jobs with a `deploy:` section (rolling, blue-green, canary behind HAProxy).

See docs/deployments.md. Strategies are pure (`deploy.strategies`); `deploy.engine` is the
tick that wraps them in I/O; the worker glue is `worker/deploy_tasks.py`.
"""
