"""Reports on ablation experiments: MLflow -> tables (load) -> statistics (stats) -> words (answers),
caveats (caveats: failures, code versions, comparability), the opening paragraph (opening), figures
(figures) -> one self-contained HTML page and a Markdown file (render, report).

Entry points: ``analysis.report.write_report`` and ``analysis.report.log_report``.
"""
