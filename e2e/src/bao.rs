//! An OpenBao admin client speaking the HTTP API with the root token.

use serde_json::Value;

/// An OpenBao server reachable at `addr` with `token`.
#[derive(Clone, Debug)]
pub struct Bao {
    pub addr: String,
    pub token: String,
    client: reqwest::Client,
}

impl Bao {
    pub fn new(addr: &str, token: &str) -> Bao {
        Bao {
            addr: addr.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Calls `/v1/PATH`: (status, JSON body or null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> crate::Result<(u16, Value)> {
        let method: reqwest::Method = method
            .parse()
            .map_err(|_| crate::Error::Setup(format!("bad HTTP method {method}")))?;
        let mut req = self
            .client
            .request(method.clone(), format!("{}/v1/{}", self.addr, path))
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| crate::Error::Setup(format!("OpenBao {method} {path}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Calls `/v1/PATH` and fails unless the answer is 2xx.
    pub async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let (status, v) = self.call(method, path, body).await?;
        if status >= 300 {
            return Err(crate::Error::Setup(format!(
                "OpenBao {method} {path} answered {status}: {v}"
            )));
        }
        Ok(v)
    }

    /// Like [`Bao::try_api`], panicking on failure (the shape `jwt.rs` uses).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_api(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }
}
