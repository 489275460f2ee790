"""`listener stats`: the seed's monitoring figures over a window (its DEPLOY-V8 step 4.2), plus
retries, the due backlog and what is waiting (`figures`), and their plain-text tables
(`render`). The command line itself is in `listener.commands.cli`."""

from listener.commands.stats.figures import Stats, collect_stats
from listener.commands.stats.render import render

__all__ = ["Stats", "collect_stats", "render"]
