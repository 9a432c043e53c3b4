"""Quality on live traffic: a sample of answers, once sent, read back teacher-forced by the
other model (shadow.py), compared position by position (compare.py) into each variant's
running figures against the base (live.py), which /v1/variants, the metrics and the router
read."""
