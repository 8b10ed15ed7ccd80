"""Report views: how each check's stored rows read (scorecard entries, tables).

One module per check's view (``views/adversarial.py`` ...); a check points at its view with
``view = AdversarialView``. Views only read stored rows: they compute nothing the check did not
store, so ``mlsafety report RUN_ID`` rebuilds the same report from the database alone.
"""
