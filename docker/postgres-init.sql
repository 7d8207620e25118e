-- The Feast SQL registry lives in its own database beside Airflow's metadata DB.
CREATE DATABASE feast OWNER recforge;
-- The run index (runs, deployment histories) in one more.
CREATE DATABASE recforge OWNER recforge;
