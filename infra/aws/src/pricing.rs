//! What an hour of an instance type costs, from AWS itself: on-demand from
//! the AWS Price List Query API (`GetProducts`, Linux, shared tenancy, no
//! pre-installed software), spot from EC2's `DescribeSpotPriceHistory` (the
//! price in effect now in each Availability Zone, averaged over them: a
//! pool's subnets spread its runners across zones).

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_pricing::types::{Filter, FilterType};
use aws_smithy_types::DateTime;

/// The Region whose endpoint serves the Price List Query API for every
/// Region (it also runs in eu-central-1 and ap-south-1).
pub const PRICE_LIST_REGION: &str = "us-east-1";

/// Why a price could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    /// The Price List API refused or failed.
    #[error("the AWS Price List API: {0}")]
    PriceList(String),
    /// `DescribeSpotPriceHistory` refused or failed.
    #[error("EC2 DescribeSpotPriceHistory: {0}")]
    SpotHistory(String),
    /// An answer was not shaped as AWS documents it.
    #[error("{what}: {why}")]
    Unreadable {
        /// Which answer.
        what: String,
        /// What was wrong with it.
        why: String,
    },
}

/// Reads prices of instance types in one Region.
pub struct AwsPrices {
    pricing: aws_sdk_pricing::Client,
    ec2: aws_sdk_ec2::Client,
    region: String,
}

impl AwsPrices {
    /// Prices in `config`'s Region. The Price List API is asked in
    /// [`PRICE_LIST_REGION`] unless `config` names an endpoint.
    pub fn new(config: &SdkConfig) -> Self {
        let pricing = if config.endpoint_url().is_some() {
            config.clone()
        } else {
            config
                .to_builder()
                .region(aws_config::Region::new(PRICE_LIST_REGION))
                .build()
        };
        Self::with(&pricing, config)
    }

    /// Prices in `ec2`'s Region, asking the Price List API as `pricing` says.
    pub fn with(pricing: &SdkConfig, ec2: &SdkConfig) -> Self {
        AwsPrices {
            pricing: crate::calls::pricing(pricing),
            ec2: crate::calls::ec2(ec2),
            region: ec2
                .region()
                .map_or_else(|| "us-east-1".to_owned(), |r| r.to_string()),
        }
    }

    /// The Region priced.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// USD an hour of `instance_type` on demand (Linux, shared tenancy), or
    /// none when the Price List has no such product in the Region.
    pub async fn on_demand(&self, instance_type: &str) -> Result<Option<f64>, PricesError> {
        let term = |field: &str, value: &str| {
            Filter::builder()
                .r#type(FilterType::TermMatch)
                .field(field)
                .value(value)
                .build()
                .map_err(|e| PricesError::PriceList(e.to_string()))
        };
        let answer = self
            .pricing
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .filters(term("instanceType", instance_type)?)
            .filters(term("regionCode", &self.region)?)
            .filters(term("operatingSystem", "Linux")?)
            .filters(term("tenancy", "Shared")?)
            .filters(term("preInstalledSw", "NA")?)
            .filters(term("capacitystatus", "Used")?)
            .max_results(10)
            .send()
            .await
            .map_err(|e| {
                PricesError::PriceList(aws_sdk_pricing::error::DisplayErrorContext(e).to_string())
            })?;
        let mut prices = Vec::new();
        for product in answer.price_list() {
            prices.extend(
                hourly_on_demand(product).map_err(|why| PricesError::Unreadable {
                    what: format!("the Price List's product for {instance_type}"),
                    why,
                })?,
            );
        }
        // Products that differ only in what the filters leave open (a
        // license model) carry the same compute price; the lowest is Linux's.
        Ok(prices.into_iter().reduce(f64::min))
    }

    /// USD an hour of `instance_type` on spot (Linux/UNIX) now: each
    /// Availability Zone's price in effect, averaged; none when EC2 has no
    /// spot price for it in the Region.
    pub async fn spot(
        &self,
        instance_type: &str,
        now: DateTime,
    ) -> Result<Option<f64>, PricesError> {
        let mut pages = self
            .ec2
            .describe_spot_price_history()
            .instance_types(aws_sdk_ec2::types::InstanceType::from(instance_type))
            .product_descriptions("Linux/UNIX")
            .product_descriptions("Linux/UNIX (Amazon VPC)")
            // From now: EC2 answers the price in effect then in each zone.
            .start_time(now)
            .end_time(now)
            .into_paginator()
            .send();
        let mut latest: BTreeMap<String, (DateTime, f64)> = BTreeMap::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                PricesError::SpotHistory(aws_sdk_ec2::error::DisplayErrorContext(e).to_string())
            })?;
            for price in page.spot_price_history() {
                let (Some(zone), Some(usd), Some(at)) = (
                    price.availability_zone(),
                    price.spot_price(),
                    price.timestamp(),
                ) else {
                    continue;
                };
                let usd: f64 = usd.parse().map_err(|_| PricesError::Unreadable {
                    what: format!("the spot price of {instance_type} in {zone}"),
                    why: format!("{usd:?} is not a number"),
                })?;
                let entry = latest.entry(zone.to_owned()).or_insert((*at, usd));
                if *at > entry.0 {
                    *entry = (*at, usd);
                }
            }
        }
        if latest.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            latest.values().map(|(_, usd)| usd).sum::<f64>() / latest.len() as f64,
        ))
    }
}

/// The hourly USD prices of a Price List product (one JSON document of
/// `GetProducts`' `PriceList`): its `terms.OnDemand.*.priceDimensions.*`
/// whose unit is hours.
pub fn hourly_on_demand(product: &str) -> Result<Vec<f64>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(product).map_err(|e| format!("not JSON: {e}"))?;
    let Some(terms) = doc.pointer("/terms/OnDemand").and_then(|t| t.as_object()) else {
        return Ok(Vec::new());
    };
    let mut prices = Vec::new();
    for term in terms.values() {
        let Some(dimensions) = term.get("priceDimensions").and_then(|d| d.as_object()) else {
            return Err("an on-demand term without priceDimensions".into());
        };
        for dimension in dimensions.values() {
            if dimension.get("unit").and_then(|u| u.as_str()) != Some("Hrs") {
                continue;
            }
            let usd = dimension
                .pointer("/pricePerUnit/USD")
                .and_then(|u| u.as_str())
                .ok_or("a price dimension without pricePerUnit.USD")?;
            prices.push(
                usd.parse::<f64>()
                    .map_err(|_| format!("pricePerUnit.USD {usd:?} is not a number"))?,
            );
        }
    }
    Ok(prices)
}
