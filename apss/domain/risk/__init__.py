"""Risk control as pure rules: the rule grammar and its evaluator (rules.py) and the fraud score
model's tree evaluator (score.py). No I/O here; the services apply decisions in the write path."""
